#!/usr/bin/env bash
# FS-VFM ViT-S/16: batch 512 x accum 2 per process, 600 epochs on VGGFace2 (the released recipe).
# Environment overrides (DATA_PATH, OUTPUT_DIR, NPROC_PER_NODE, DEVICE, EXTRA_ARGS): see pretrain_FSVFM.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain_FSVFM.sh" S "$@"
