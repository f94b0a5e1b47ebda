#!/usr/bin/env bash
# Cross-domain face anti-spoofing: one fine-tuning job per leave-one-out target (the released settings, FS-Adapter rows included).
# The run_FAS-* scripts call this with a row of the table below.
#   scripts/finetune_FAS.sh {MCIO|WCS} {ViT-S|ViT-B|ViT-L|FS-Adapter-ViT-{S,B,L}} [extra main_finetune_FAS.py flags]
# MCIO: OCI->M (--config M), OMI->C (C), OCM->I (I), ICM->O (O); WCS: targets cefa, surf, wmca (the original shipped
# no WCS script; its rows reuse the MCIO lr/wd of the size).
# Environment overrides (paths are relative to the repository root):
#   PRETRAINED_DIR (checkpoint/pretrained_models)  PRETRAINED (the row's file under it)
#   FAS_DATA_ROOT (datasets/finetune_datasets/face_anti_spoofing/data)
#   OUTPUT_ROOT (checkpoint/finetuned_models, FS-Adapter: checkpoint/finetuned_models_FS-Adapter)
#   OUTPUT_DIR (the row's folder under it: {tag}/{MCIO|WCS}_protocol); each job writes OUTPUT_DIR/{job}/
#   TARGETS (the protocol's configs, e.g. "M C")  LR  WD  WEIGHT_CL (FS-Adapter rows)  (the row's values)
#   NPROC_PER_NODE (1, as the original)  DRY_RUN=1 prints the commands instead of running them
# plus everything scripts/launch.sh reads (PYTHON, CUDA_VISIBLE_DEVICES, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
usage_unless_two $# "{MCIO|WCS} {ViT-S|ViT-B|ViT-L|FS-Adapter-ViT-S|FS-Adapter-ViT-B|FS-Adapter-ViT-L} [flags]"
PROTOCOL="$1"; SIZE="$2"; shift 2

# weight_cl "-": full fine-tuning; a value: FS-Adapter (adapter, projector, embedder and classifier train)
#   size              model                         pre-trained release/file                   lr     wd    tag            weight_cl
case "$SIZE" in
  ViT-S)            row=(vit_small_patch16            FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 2.5e-5 1e-6 ViT-S_VF2_600e -) ;;
  ViT-B)            row=(vit_base_patch16             FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 2.5e-5 1e-6 ViT-B_VF2_600e -) ;;
  ViT-L)            row=(vit_large_patch16            FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 1e-5   1e-5 ViT-L_VF2_600e -) ;;
  FS-Adapter-ViT-S) row=(vit_small_patch16_fs_adapter FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth 5e-2   1e-6 ViT-S_VF2_600e 0.1) ;;
  FS-Adapter-ViT-B) row=(vit_base_patch16_fs_adapter  FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth 5e-2   5e-5 ViT-B_VF2_600e 0.1) ;;
  FS-Adapter-ViT-L) row=(vit_large_patch16_fs_adapter FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth 1e-3   1e-7 ViT-L_VF2_600e 0.2) ;;
  *) echo "unknown size: $SIZE" >&2; exit 2 ;;
esac
# config:job folder (full fine-tuning names the folder after the protocol, the adapter code after the target)
case "$PROTOCOL" in
  MCIO) jobs=(M:OCI2M C:OMI2C I:OCM2I O:ICM2O) ;;
  WCS)  jobs=(cefa:cefa surf:surf wmca:wmca) ;;
  *) echo "unknown protocol: $PROTOCOL (MCIO or WCS)" >&2; exit 2 ;;
esac
row_setup "${row[1]}" "${row[5]}"
OUTPUT_DIR="${OUTPUT_DIR:-${OUTPUT_ROOT:-$output_root}/${row[4]}/${PROTOCOL}_protocol}"
export NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
export FSVFM_GPU_RECIPE="FAS $PROTOCOL $SIZE fine-tuning"
read -r -a targets <<< "${TARGETS:-}"

for job in "${jobs[@]}"; do
  config="${job%%:*}"; name="${job#*:}"
  if [[ ${#targets[@]} -gt 0 && ! " ${targets[*]} " == *" $config "* ]]; then continue; fi
  if [[ ${#method[@]} -gt 0 ]]; then name="$config"; fi
  cmd=(fsvfm/main_finetune_FAS.py --config "$config" --model "${row[0]}" --pt_model "$PRETRAINED"
    --lr "${LR:-${row[2]}}" --wd "${WD:-${row[3]}}" --fas_data_root "${FAS_DATA_ROOT:-datasets/finetune_datasets/face_anti_spoofing/data}"
    --op_dir "$OUTPUT_DIR/$name/" --report_logger_path "$OUTPUT_DIR/$name/performance.csv" "${method[@]}" "$@")
  launch "${cmd[@]}"
done
