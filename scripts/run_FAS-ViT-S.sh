#!/usr/bin/env bash
# FAS: fine-tune FS-VFM ViT-S/16 (VGGFace2, 600 epochs) on OCI->M, OMI->C, OCM->I, ICM->O; settings and overrides in finetune_FAS.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/finetune_FAS.sh" MCIO ViT-S "$@"
