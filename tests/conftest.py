"""Fixtures shared by several test modules (the shared helpers are in tests/helpers.py), a progress line
with an estimate every 30 s, and the rule that a test starting a process is marked ``slow``."""
from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fsvfm import hub
from fsvfm.util.checkpoint import save_checkpoint
from fsvfm.util.norm_stats import STATS_FILENAME
from tests.helpers import FT, PRE, SHARED, add_to_cache, make_split_tree, write_pretrain_checkpoint

# A hung collective in a multi-process test fails it after 2 minutes instead of fsvfm's 30 (the
# subprocesses inherit it); a test may still set its own.
os.environ.setdefault("FSVFM_DIST_TIMEOUT", "2")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs the workspace's shared/ folder at {SHARED} (real photos in shared/faces/, beside the "
                    "repository)")
    return SHARED


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One per test module: ``(root, tiny pre-training checkpoint, data tree with train/ (12) and val/ (8))``."""
    root = tmp_path_factory.mktemp("ft")
    data = make_split_tree(root / "data", "train", videos=2, frames=3)
    make_split_tree(data, "val", videos=2, frames=2)
    return root, write_pretrain_checkpoint(root / "pretrain"), data


# ------------------------------------------------------------------------------------ a hub cache
@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, bytes]:
    """Repository path -> bytes: a tiny pre-trained release (online, target, statistics) and a fine-tuned folder."""
    src = tmp_path_factory.mktemp("release")
    write_pretrain_checkpoint(src)
    save_checkpoint(src / "checkpoint-te-1.pth", {"w": torch.zeros(1)}, epoch=1, network="target")
    files = {f"{PRE}/checkpoint-599.pth": (src / "checkpoint-1.pth").read_bytes(),
             f"{PRE}/checkpoint-te-599.pth": (src / "checkpoint-te-1.pth").read_bytes(),
             f"{PRE}/{STATS_FILENAME}": (src / STATS_FILENAME).read_bytes(),
             f"{FT}/log_detail.txt": b"fine-tuning log\n",
             f"{FT}/experiments_test/test_results.txt": b"results\n"}
    return files


@pytest.fixture
def cache(tmp_path, monkeypatch, released) -> Path:
    """An offline hub cache holding ``released``, in the hub's own on-disk layout."""
    from huggingface_hub import constants
    root = tmp_path / "hub_cache"
    for rel, data in released.items():
        add_to_cache(root, rel, data)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.resolve_hub_uri.cache_clear()
    yield root
    hub.resolve_hub_uri.cache_clear()


# ------------------------------------------------------------------------------------ progress and ETA
PROGRESS_EVERY_S = float(os.environ.get("FSVFM_TEST_PROGRESS_S", "30"))   # 0: no progress lines


class _Progress:
    """Every ``PROGRESS_EVERY_S`` seconds one line ``[progress] done/total, elapsed, ETA`` on the terminal
    (between the -q dots): the ETA assumes the remaining tests take the mean time of the finished ones."""

    def __init__(self, reporter, total: int) -> None:
        self.reporter, self.total, self.done = reporter, total, 0
        self.start = self.last = time.monotonic()

    def finished_one(self) -> None:
        self.done += 1
        now = time.monotonic()
        if PROGRESS_EVERY_S > 0 and now - self.last >= PROGRESS_EVERY_S and self.done < self.total:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            if self.reporter._tw.width_of_current_line:     # after -q dots: own line
                self.reporter._tw.line()
            self.reporter.write_line(f"[progress] {self.done}/{self.total} tests, {_mmss(elapsed)} elapsed, "
                                     f"about {_mmss(eta)} left")


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


_PROGRESS: list[_Progress] = []


def pytest_collection_finish(session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    _PROGRESS.clear()
    _STARTED.clear()                     # processes of collection (skipif probes) belong to no test
    if reporter is not None and session.items:
        _PROGRESS.append(_Progress(reporter, len(session.items)))


def pytest_runtest_logfinish(nodeid, location) -> None:
    for progress in _PROGRESS:
        progress.finished_one()


# ------------------------------------------------------------------------------------ slow = starts processes
# `make test-fast` (-m "not slow") must stay fast and single-process: a test that starts a subprocess or a
# process (pool workers, DataLoader workers, DDP ranks) without the slow marker fails, naming what it started.
_STARTED: list[str] = []
_real_popen_init = subprocess.Popen.__init__
_real_process_start = multiprocessing.process.BaseProcess.start


def _popen_init(self, args, *a, **kw):
    _STARTED.append(f"subprocess {str(args)[:120]}")
    _real_popen_init(self, args, *a, **kw)


def _process_start(self):
    _STARTED.append(f"process {self.name}")
    _real_process_start(self)


subprocess.Popen.__init__ = _popen_init
multiprocessing.process.BaseProcess.start = _process_start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "setup":
        item._fsvfm_started = list(_STARTED)
        _STARTED.clear()
        return
    if call.when != "call":
        _STARTED.clear()                 # a finaliser's process belongs to no later test
        return
    started = item.__dict__.pop("_fsvfm_started", []) + list(_STARTED)
    _STARTED.clear()
    report = outcome.get_result()
    if started and report.passed and item.get_closest_marker("slow") is None:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} started {len(started)} process(es) ({started[0]}) without "
                           "@pytest.mark.slow: mark it slow (make test-fast runs -m 'not slow')")
