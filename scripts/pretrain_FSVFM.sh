#!/usr/bin/env bash
# FS-VFM pre-training recipe (the released one) for one model size; the named scripts
# pretrain_FSVFM_ViT-{S,B,L}.sh call this.
#   scripts/pretrain_FSVFM.sh {S|B|L} [more main_pretrain.py flags...]
# Environment overrides (all optional):
#   DATA_PATH       data root(s), space-separated (default: datasets/pretrain_datasets/VGG-Face2)
#   OUTPUT_DIR      output folder (default: checkpoint/pretrain_models/FS-VFM_ViT-<size>_VF2_600e)
#   NPROC_PER_NODE  processes per node (default: all visible GPUs, at least 1; the recipe used 4,
#                   and the lr follows the effective batch = batch * accum * processes)
#   DEVICE          cuda or cpu (default: cuda when available)
#   EXTRA_ARGS      extra flags, placed last so they win, e.g. "--epochs 1 --batch_size 4"
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON, OMP_NUM_THREADS: see launch.sh
# Relative DATA_PATH / OUTPUT_DIR values are taken from the current folder; the defaults from the repo root.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SIZE="${1:-}"
case "$SIZE" in
  S) MODEL=fsfm_vit_small_patch16; BATCH=512; ACCUM=2 ;;
  B) MODEL=fsfm_vit_base_patch16;  BATCH=256; ACCUM=4 ;;
  L) MODEL=fsfm_vit_large_patch16; BATCH=256; ACCUM=4 ;;
  *) echo "usage: $0 {S|B|L} [flags...]" >&2; exit 2 ;;
esac
shift
abs() { if [[ "$1" = /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
DATA_ARGS=()
if [[ -n "${DATA_PATH:-}" ]]; then
  for p in $DATA_PATH; do DATA_ARGS+=(--pretrain_data_path "$(abs "$p")"); done
else
  DATA_ARGS=(--pretrain_data_path datasets/pretrain_datasets/VGG-Face2)
fi
OUT="checkpoint/pretrain_models/FS-VFM_ViT-${SIZE}_VF2_600e"
[[ -n "${OUTPUT_DIR:-}" ]] && OUT="$(abs "$OUTPUT_DIR")"
DEVICE_ARGS=()
[[ -n "${DEVICE:-}" ]] && DEVICE_ARGS=(--device "$DEVICE")
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
export FSVFM_GPU_RECIPE="pretrain_FSVFM_ViT-$SIZE"
exec "$HERE/launch.sh" fsvfm/main_pretrain.py \
  --model "$MODEL" --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs 600 --input_size 224 \
  --num_workers 32 --mask_ratio 0.75 --norm_pix_loss --weight_sfr 0.007 --weight_cl 0.1 \
  --cl_loss SimSiam --weight_decay 0.05 --blr 1.5e-4 --warmup_epochs 40 \
  "${DATA_ARGS[@]}" --output_dir "$OUT" "${DEVICE_ARGS[@]}" "${EXTRA[@]}" "$@"
