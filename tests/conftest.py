"""Shared test fixtures: tiny model configurations and the workspace's shared/ folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# A hung collective in a multi-process test fails it after 2 minutes instead of fsvfm's 30 (the
# subprocesses inherit it); a test may still set its own.
os.environ.setdefault("FSVFM_DIST_TIMEOUT", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# A pre-training network small enough for CPU tests (widths must divide by the head counts).
TINY_FSFM = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, rep_decoder_embed_dim=48,
                 rep_decoder_depth=1, rep_decoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                 decoder_num_heads=2, projection_size=16, projection_hidden_size=64)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    return SHARED


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One per test module: ``(root, tiny pre-training checkpoint, data tree with train/ (12) and val/ (8))``."""
    from tests.test_finetune_data import make_split_tree
    from tests.test_finetune_e2e import write_pretrain_checkpoint
    root = tmp_path_factory.mktemp("ft")
    data = make_split_tree(root / "data", "train", videos=2, frames=3)
    make_split_tree(data, "val", videos=2, frames=2)
    return root, write_pretrain_checkpoint(root / "pretrain"), data
