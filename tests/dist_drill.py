"""Fault drills for ``fsvfm.util.dist`` on gloo/CPU, run as subprocesses by tests/test_dist_faults.py.

    python tests/dist_drill.py worker OUT [MODE]   one rank (env from the launcher): all-reduce in a loop;
                                                   MODE ``hang``: rank 1 stops taking part after the set-up;
                                                   ``local``: every rank only computes locally (no collective
                                                   can fail first, so only the watchdog can end it)
    python tests/dist_drill.py kill-launcher OUT   torchrun with 2 ``local`` workers; kill -9 torchrun; print
                                                   the workers' exit codes as JSON (this process adopts them)
    python tests/dist_drill.py kill-rank OUT       torchrun with 2 workers; kill -9 rank 1; print torchrun's
                                                   exit code and whether rank 0 is still running
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def worker(out: Path, mode: str) -> int:
    import torch

    from fsvfm.util import dist
    args = argparse.Namespace(device="cpu")
    dist.init_distributed_mode(args)
    (out / f"{args.rank}.pid").write_text(str(os.getpid()))
    if (mode == "hang" and args.rank == 1) or mode == "local":
        time.sleep(3600)
    t = torch.ones(1)
    try:
        while True:
            torch.distributed.all_reduce(t)
            time.sleep(0.01)
    except RuntimeError as e:
        print(f"rank {args.rank} collective failed: {e}", file=sys.stderr, flush=True)
        dist.cleanup()                      # as the programs' main() does on the way out
        return 3


def _torchrun(out: Path, mode: str = "") -> tuple[subprocess.Popen, dict[int, int]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor_interval=0.1", __file__, "worker", str(out), mode]
    launcher = subprocess.Popen(cmd)
    pids: dict[int, int] = {}
    while len(pids) < 2:
        if launcher.poll() is not None:
            raise RuntimeError(f"torchrun ended early with {launcher.returncode}")
        for rank in (0, 1):
            f = out / f"{rank}.pid"
            if f.is_file() and f.read_text():
                pids[rank] = int(f.read_text())
        time.sleep(0.05)
    return launcher, pids


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def kill_launcher(out: Path) -> dict:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # adopt the orphans
    launcher, pids = _torchrun(out, "local")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    return {str(rank): os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for rank, pid in pids.items()}


def kill_rank(out: Path) -> dict:
    launcher, pids = _torchrun(out)
    os.kill(pids[1], signal.SIGKILL)
    code = launcher.wait()
    return {"torchrun": code, "rank0_running": running(pids[0])}


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "worker":
        sys.exit(worker(out_dir, sys.argv[3] if len(sys.argv) > 3 else ""))
    print(json.dumps({"kill-launcher": kill_launcher, "kill-rank": kill_rank}[mode](out_dir)), flush=True)
