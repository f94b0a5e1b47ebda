#!/usr/bin/env bash
# All GPU figures of issue 13 in one run: about 5-8 minutes on one H200, at most 9.2 by the per-step limits.
# Not run yet (no GPU in the session that wrote it).
#   bash benchmarks/device_check.sh            # JSON lines to stdout and to ${OUT:-.}/device_check.jsonl
# Order: the figures the issue needs first, the optional compile runs last; each step has its own
# time limit, so one slow or failing step does not cost the others.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD
LOG=${OUT:-.}/device_check.jsonl
: > "$LOG"

step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "== $name" >&2
  local start=$SECONDS
  timeout "$limit" "$@" | tee -a "$LOG"
  if [ "${PIPESTATUS[0]}" -eq 0 ]; then
    echo "== $name: ok in $((SECONDS - start)) s" >&2
  else
    echo "{\"step\": \"$name\", \"failed\": true, \"after_s\": $((SECONDS - start))}" | tee -a "$LOG"
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
step 110 "ViT-B bf16 fast vs baseline, batch 128" \
  $PY benchmarks/device_pretrain_step.py --baseline --batch_size 128
step 60 "ViT-B bf16 fast, batch 256" \
  $PY benchmarks/device_pretrain_step.py --batch_size 256 --steps 20
step 110 "ViT-L bf16 fast vs baseline, batch 128" \
  $PY benchmarks/device_pretrain_step.py --model fsfm_vit_large_patch16 --baseline --batch_size 128 --warmup 10 --steps 20
step 45 "data path per worker (this machine's CPU)" \
  $PY benchmarks/bench_datapath.py --num_images 512
step 120 "ViT-B bf16 fast + torch.compile, batch 128" \
  $PY benchmarks/device_pretrain_step.py --compile --batch_size 128 --warmup 10
step 100 "classifier inference, fast (compile) vs baseline" \
  $PY benchmarks/bench_eval.py --device cuda --baseline --iters 30
echo "results: $LOG" >&2
