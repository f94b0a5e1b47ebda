"""Fixtures shared by several test modules (the shared helpers are in tests/helpers.py), and the progress
line of a long run."""
from __future__ import annotations

import os
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
