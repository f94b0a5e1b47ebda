#!/usr/bin/env bash
# Shared launcher for every entry point: one process, or torchrun for several GPUs / nodes.
#   scripts/launch.sh fsvfm/main_pretrain.py --flag value ...
# Environment (all optional):
#   NPROC_PER_NODE  processes per node (default: number of visible GPUs, at least 1)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node rendezvous (defaults 1, 0, 127.0.0.1, 29500)
#   PYTHON          interpreter (default: the repo's .venv if present, else python3)
#   OMP_NUM_THREADS threads per process (default 1 when several processes run)
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
if [[ "$NPROC_PER_NODE" -eq 1 && "$NNODES" -eq 1 ]]; then
  exec "$PYTHON" "$ENTRY" "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC_PER_NODE" --nnodes="$NNODES" \
  --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${MASTER_PORT:-29500}" "$ENTRY" "$@"
