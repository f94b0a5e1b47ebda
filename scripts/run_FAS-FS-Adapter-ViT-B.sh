#!/usr/bin/env bash
# FAS: FS-Adapter on the frozen FS-VFM ViT-B/16 (VGGFace2, 600 epochs), OCI->M, OMI->C, OCM->I, ICM->O; settings in finetune_FAS.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/finetune_FAS.sh" MCIO FS-Adapter-ViT-B "$@"
