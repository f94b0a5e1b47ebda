"""Distributed faults on gloo/CPU: a hung rank times out, a dead launcher or rank stops the workers."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import pytest

from fsvfm.util import dist
from fsvfm.util.args import distributed_parser
from tests.helpers import REPO, free_port

DRILL = REPO / "tests" / "dist_drill.py"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: the drill reads /proc and uses prctl")


def test_dist_timeout_sources(monkeypatch):
    monkeypatch.delenv(dist.DIST_TIMEOUT_ENV, raising=False)
    assert dist.dist_timeout(argparse.Namespace()) == datetime.timedelta(minutes=30)
    monkeypatch.setenv(dist.DIST_TIMEOUT_ENV, "0.5")
    assert dist.dist_timeout(argparse.Namespace()) == datetime.timedelta(seconds=30)
    assert dist.dist_timeout(argparse.Namespace(dist_timeout=2)) == datetime.timedelta(minutes=2)  # flag wins
    for bad in ("abc", "0", "-1", "inf"):
        monkeypatch.setenv(dist.DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"FSVFM_DIST_TIMEOUT={bad!r}: .* positive number of minutes"):
            dist.dist_timeout(None)
    assert dist.dist_timeout(distributed_parser().parse_args(["--dist_timeout", "1.5"])) == \
        datetime.timedelta(seconds=90)
    monkeypatch.setenv(dist.DIST_TIMEOUT_ENV, "3")
    assert dist.dist_timeout(distributed_parser().parse_args([])) == datetime.timedelta(minutes=3)
    with pytest.raises(ValueError, match="--dist_timeout=0.0: "):
        dist.dist_timeout(distributed_parser().parse_args(["--dist_timeout", "0"]))


@pytest.mark.slow
def test_hung_rank_times_out_after_the_set_timeout(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           dist.DIST_TIMEOUT_ENV: "0.05"}                                  # 3 s
    procs = [subprocess.Popen([sys.executable, str(DRILL), "worker", str(tmp_path), "hang"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        _, err = procs[0].communicate(timeout=120)
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 3, err[-2000:]
    assert "rank 0 collective failed" in err and "3000ms" in err


def _drill(mode: str, out) -> tuple[dict, str]:
    """Run a torchrun drill of tests/dist_drill.py; its JSON result and the stderr of all processes."""
    r = subprocess.run([sys.executable, str(DRILL), mode, str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


@linux_only
@pytest.mark.slow
def test_workers_exit_when_the_launcher_is_killed(tmp_path):
    result, stderr = _drill("kill-launcher", tmp_path)
    assert result == {"0": dist.LAUNCHER_GONE_EXIT_CODE, "1": dist.LAUNCHER_GONE_EXIT_CODE}
    assert stderr.count("has exited; this worker stops too") == 2


@linux_only
@pytest.mark.slow
def test_killed_rank_stops_the_other_rank(tmp_path):
    assert _drill("kill-rank", tmp_path)[0] == {"torchrun": 1, "rank0_running": False}
