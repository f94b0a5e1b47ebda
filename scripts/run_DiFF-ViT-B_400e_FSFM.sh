#!/usr/bin/env bash
# DiFF: fine-tune the CVPR'25 FSFM ViT-B/16 (VGGFace2, 400 epochs), then test; settings and overrides in finetune_then_test.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/finetune_then_test.sh" DiFF ViT-B_400e_FSFM "$@"
