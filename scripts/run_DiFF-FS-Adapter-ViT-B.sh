#!/usr/bin/env bash
# DiFF: FS-Adapter on the frozen FS-VFM ViT-B/16 (VGGFace2, 600 epochs), then test; settings and overrides in finetune_then_test.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/finetune_then_test.sh" DiFF FS-Adapter-ViT-B "$@"
