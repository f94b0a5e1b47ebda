#!/usr/bin/env bash
# Shared launcher for every entry point: one process, or torchrun for several GPUs / nodes.
#   scripts/launch.sh fsvfm/main_pretrain.py --flag value ...
# Environment (all optional):
#   NPROC_PER_NODE  processes per node (default: number of visible GPUs, at least 1)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node rendezvous (defaults 1, 0, 127.0.0.1, 29500)
#   PYTHON          interpreter (default: the repo's .venv if present, else python3)
#   OMP_NUM_THREADS threads per process (default 1 when several processes run)
#   FSVFM_GPU_RECIPE set by the GPU recipe scripts (a name): warn when no CUDA device is visible,
#                   unless the arguments ask for --device cpu
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $# -lt 1 ]]; then
  echo "usage: $0 ENTRY_POINT.py [ARGS...]" >&2
  exit 2
fi
ENTRY="$1"; shift
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES="${NNODES:-1}"
wants_cpu=0
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--device=cpu" ]] || { [[ "${!i}" == "--device" ]] && (( i < $# )) && [[ "${@:i+1:1}" == cpu ]]; }; then
    wants_cpu=1
  fi
done
if [[ -n "${FSVFM_GPU_RECIPE:-}" && "$wants_cpu" == 0 ]]; then
  # only an explicit 0 warns (a PYTHON that does not run Python, as in the dry runs, prints something else)
  if [[ "$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || true)" == 0 ]]; then
    echo "warning: $FSVFM_GPU_RECIPE is a GPU recipe but no CUDA device is visible: it will run on the CPU," \
      "far too slowly for its settings (pass --device cpu and smaller settings on purpose, or use a GPU machine)" >&2
  fi
fi
if [[ "$NPROC_PER_NODE" -eq 1 && "$NNODES" -eq 1 ]]; then
  exec "$PYTHON" "$ENTRY" "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC_PER_NODE" --nnodes="$NNODES" \
  --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${MASTER_PORT:-29500}" "$ENTRY" "$@"
