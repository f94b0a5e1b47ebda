#!/usr/bin/env bash
# Fine-tune a released FS-VFM/FSFM encoder for DfD or DiFF, then test the min-val-loss checkpoint
# (the released settings, FS-Adapter rows included). The run_DfD-*/run_DiFF-* scripts call this with a row
# of the table below.
#   scripts/finetune_then_test.sh {DfD|DiFF} {ViT-S|ViT-B|ViT-L|ViT-B_400e_FSFM|FS-Adapter-ViT-{S,B,L}} [extra flags]
# Environment overrides (paths are relative to the repository root):
#   PRETRAINED_DIR (checkpoint/pretrained_models)  PRETRAINED (the row's file under it)
#   DATA_ROOT (datasets/finetune_datasets)          FINETUNE_DATA_PATH (the task's FF++ folder)
#   OUTPUT_ROOT (checkpoint/finetuned_models, FS-Adapter: checkpoint/finetuned_models_FS-Adapter)
#   OUTPUT_DIR (the row's folder under it)  TEST_ROOT (DATA_ROOT)  BLR  LAYER_DECAY  WEIGHT_DECAY
#   BATCH_SIZE  EPOCHS  WEIGHT_CL (FS-Adapter rows)  (the row's values)  TEST_BATCH_SIZE (320)
#   TEST_EXTRA_ARGS (extra test flags, word-split)  NPROC_PER_NODE (2)  MASTER_PORT (the row's)
#   DRY_RUN=1 prints the two commands instead of running them
# plus everything scripts/launch.sh reads (PYTHON, NNODES, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
usage_unless_two $# "{DfD|DiFF} {ViT-S|ViT-B|ViT-L|ViT-B_400e_FSFM|FS-Adapter-ViT-S|...} [fine-tuning flags]"
TASK="$1"; SIZE="$2"; shift 2

# weight_cl "-": full fine-tuning; a value: FS-Adapter (only adapter/projector/head train, CE + weight_cl x contrast)
#          task/size                model                        pre-trained release/file                   blr  layer_decay wd tag      port  batch epochs weight_cl
case "$TASK/$SIZE" in
  DfD/ViT-S)              row=(vit_small_patch16 FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 2e-4 0.65 0.03 ViT-S_VF2_600e 29503 32 10 -) ;;
  DfD/ViT-B)              row=(vit_base_patch16  FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 2e-4 0.6  0.03 ViT-B_VF2_600e 29502 32 10 -) ;;
  DfD/ViT-L)              row=(vit_large_patch16 FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 5e-5 0.90 0.01 ViT-L_VF2_600e 29501 32 10 -) ;;
  DiFF/ViT-S)             row=(vit_small_patch16 FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 5e-5 0.95 0.05 ViT-S_VF2_600e 29503 32 10 -) ;;
  DiFF/ViT-B)             row=(vit_base_patch16  FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 5e-5 0.90 0.03 ViT-B_VF2_600e 29502 32 10 -) ;;
  DiFF/ViT-L)             row=(vit_large_patch16 FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 5e-5 0.90 0.05 ViT-L_VF2_600e 29511 32 10 -) ;;
  DiFF/ViT-B_400e_FSFM)   row=(vit_base_patch16  VF2_ViT-B/checkpoint-400.pth             1e-4 0.90 0.03 ViT-B_VF2_400e 29502 32 10 -) ;;
  DfD/FS-Adapter-ViT-S)   row=(vit_small_patch16_fs_adapter FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 1e-3 0 0 ViT-S_VF2_600e 29521 256 60 0.01) ;;
  DfD/FS-Adapter-ViT-B)   row=(vit_base_patch16_fs_adapter  FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 5e-3 0 0 ViT-B_VF2_600e 29503 128 50 0.01) ;;
  DfD/FS-Adapter-ViT-L)   row=(vit_large_patch16_fs_adapter FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 1e-2 0 0 ViT-L_VF2_600e 29502 128 50 0.1) ;;
  DiFF/FS-Adapter-ViT-S)  row=(vit_small_patch16_fs_adapter FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 1e-2 0 0 ViT-S_VF2_600e 29503 128 60 0.01) ;;
  DiFF/FS-Adapter-ViT-B)  row=(vit_base_patch16_fs_adapter  FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 1e-2 0 0 ViT-B_VF2_600e 29503 128 50 0.05) ;;
  DiFF/FS-Adapter-ViT-L)  row=(vit_large_patch16_fs_adapter FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 5e-3 0 0 ViT-L_VF2_600e 29501 512 50 0.1) ;;
  *) echo "unknown task/size: $TASK/$SIZE" >&2; exit 2 ;;
esac
MODEL="${row[0]}"
DATA_ROOT="${DATA_ROOT:-datasets/finetune_datasets}"
FF="$DATA_ROOT/deepfakes_detection/FaceForensics/32_frames"
# task -> its training folder under $FF and its run name (the test program is fsvfm/main_test_$TASK.py)
declare -A TRAIN_FOLDER=([DfD]=DS_FF++_all_cls/c23 [DiFF]=DS_FF++_each_cls/c23/DeepFakes)
declare -A RUN_NAMES=([DfD]=FT_on_FF++_c23_32frames [DiFF]=FT_on_FF++_DF_c23_32frames)
DATA_DEFAULT="$FF/${TRAIN_FOLDER[$TASK]}"; RUN_NAME="${RUN_NAMES[$TASK]}"; TEST_PROGRAM="fsvfm/main_test_$TASK.py"
row_setup "${row[1]}" "${row[9]}"
OUTPUT_DIR="${OUTPUT_DIR:-${OUTPUT_ROOT:-$output_root}/${row[5]}/$RUN_NAME}"
export NPROC_PER_NODE="${NPROC_PER_NODE:-2}" MASTER_PORT="${MASTER_PORT:-${row[6]}}"
export FSVFM_GPU_RECIPE="$TASK $SIZE fine-tuning"

finetune=(fsvfm/main_finetune_DfD.py --model "$MODEL" --finetune "$PRETRAINED"
  --finetune_data_path "${FINETUNE_DATA_PATH:-$DATA_DEFAULT}" --output_dir "$OUTPUT_DIR"
  --accum_iter 1 --apply_simple_augment --batch_size "${BATCH_SIZE:-${row[7]}}" --nb_classes 2 --epochs "${EPOCHS:-${row[8]}}"
  --blr "${BLR:-${row[2]}}" --layer_decay "${LAYER_DECAY:-${row[3]}}" --weight_decay "${WEIGHT_DECAY:-${row[4]}}"
  --drop_path 0.1 --reprob 0.25 --mixup 0.8 --cutmix 1.0 --dist_eval "${method[@]}" "$@")
# The released numbers were tested without --apply_simple_augment (full 224x224 resize).
test=("$TEST_PROGRAM" --eval --model "$MODEL" --nb_classes 2 --batch_size "${TEST_BATCH_SIZE:-320}"
  --resume "$OUTPUT_DIR/checkpoint-min_val_loss.pth" --output_dir "$OUTPUT_DIR/experiments_test/"
  --test_root "${TEST_ROOT:-$DATA_ROOT}")
read -r -a test_extra <<< "${TEST_EXTRA_ARGS:-}"
test+=("${test_extra[@]}")
launch "${finetune[@]}"
launch "${test[@]}"
