# Sourced (not run) by the settings-table scripts finetune_then_test.sh and finetune_FAS.sh: what their rows share.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# usage_unless_two ARGC USAGE: the usage line and exit code 2 unless the table script got its two arguments
usage_unless_two() {
  if (( $1 < 2 )); then echo "usage: $0 $2" >&2; exit 2; fi
}

# row_setup RELEASE_FILE WEIGHT_CL: sets PRETRAINED (unless given: the release file under PRETRAINED_DIR) and, by the
# row's weight_cl ("-": full fine-tuning; a value: FS-Adapter), the method flags `method` and `output_root`
row_setup() {
  PRETRAINED="${PRETRAINED:-${PRETRAINED_DIR:-checkpoint/pretrained_models}/$1}"
  method=(); output_root=checkpoint/finetuned_models
  if [[ "$2" != - ]]; then
    method=(--trainable_modules fs-adapter --temperature 0.07 --weight_cl "${WEIGHT_CL:-$2}")
    output_root=checkpoint/finetuned_models_FS-Adapter
  fi
}

# launch ENTRY [ARGS...]: run it with scripts/launch.sh; with DRY_RUN=1 print the command line instead, after the
# launcher settings that are set (MASTER_PORT, NPROC_PER_NODE)
launch() {
  if [[ -z "${DRY_RUN:-}" ]]; then
    "$ROOT/scripts/launch.sh" "$@"
    return
  fi
  local settings=() name
  for name in MASTER_PORT NPROC_PER_NODE; do
    if [[ -n "${!name:-}" ]]; then settings+=("$name=${!name}"); fi
  done
  echo "${settings[*]} scripts/launch.sh $*"
}
