"""Quiet traps made loud: a GPU recipe on a machine without CUDA, a run that never leaves its lr warm-up,
and the explicit choice between the EMA target (default) and the original's frozen one (spec 9.1 P1)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from fsvfm.main_pretrain import get_args_parser, main
from fsvfm.pretrain_runner import build_networks
from fsvfm.util.lr_sched import warn_if_warmup_too_long
from fsvfm.util.seeding import seed_everything
from tests.helpers import REPO, TINY_FSFM
from tools.synthetic_data import make_synthetic_pretrain_dataset

WARNING = "is a GPU recipe but no CUDA device is visible"


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory):
    """Runs ``python -c`` for real (the launcher's CUDA probe) and only prints any other command line."""
    path = tmp_path_factory.mktemp("bin") / "python"
    path.write_text(f'#!/usr/bin/env bash\nif [[ "$1" == -c ]]; then exec {sys.executable} "$@"; fi\necho "$@"\n')
    path.chmod(0o755)
    return path


def _script(fake_python, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DEVICE")}
    full.update(PYTHON=str(fake_python), NPROC_PER_NODE="1", CUDA_VISIBLE_DEVICES="", **env)
    r = subprocess.run(["bash", str(REPO / "scripts" / script), *args], cwd=REPO, env=full, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_gpu_recipes_warn_without_cuda(fake_python):
    r = _script(fake_python, "pretrain_FSVFM_ViT-B.sh")
    assert r.stderr.count(WARNING) == 1 and "pretrain_FSVFM_ViT-B is a GPU recipe" in r.stderr
    assert r.stdout.startswith("fsvfm/main_pretrain.py --model fsfm_vit_base_patch16")
    r = _script(fake_python, "finetune_then_test.sh", "DfD", "ViT-B")
    assert r.stderr.count("DfD ViT-B fine-tuning is a GPU recipe") == 2          # fine-tuning, then testing
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["fsvfm/main_finetune_DfD.py",
                                                                   "fsvfm/main_test_DfD.py"]


@pytest.mark.slow
def test_asking_for_the_cpu_silences_the_warning(fake_python):
    assert WARNING not in _script(fake_python, "pretrain_FSVFM_ViT-S.sh", DEVICE="cpu").stderr
    assert WARNING not in _script(fake_python, "pretrain_FSVFM_ViT-S.sh", "--device=cpu").stderr
    assert WARNING not in _script(fake_python, "launch.sh", "fsvfm/main_pretrain.py").stderr   # not a recipe


def test_warmup_longer_than_training_is_warned():
    msg = warn_if_warmup_too_long(argparse.Namespace(epochs=1, warmup_epochs=40))
    assert msg == ("--epochs 1 <= --warmup_epochs 40: the learning rate never leaves its warm-up ramp and "
                   "reaches at most 2% of the set value; lower --warmup_epochs (e.g. --warmup_epochs 0)")
    assert warn_if_warmup_too_long(argparse.Namespace(epochs=5, warmup_epochs=5)) is not None
    assert warn_if_warmup_too_long(argparse.Namespace(epochs=6, warmup_epochs=5)) is None
    assert warn_if_warmup_too_long(argparse.Namespace(epochs=1, warmup_epochs=0)) is None


def _pretrain_argv(data, out, *extra) -> list[str]:
    overrides = json.dumps({k: v for k, v in TINY_FSFM.items() if k != "img_size"})
    return ["--pretrain_data_path", str(data), "--output_dir", str(out), "--device", "cpu", "--input_size", "32",
            "--model_overrides", overrides, "--batch_size", "2", "--num_workers", "0", "--epochs", "1",
            "--warmup_epochs", "1", "--seed", "3", *extra]


def test_frozen_target_keeps_its_initial_weights_and_warmup_is_logged(tmp_path):
    data = make_synthetic_pretrain_dataset(tmp_path / "faces", 4, size=32, seed=0)
    args = get_args_parser().parse_args(_pretrain_argv(data, tmp_path / "out", "--ema_mode", "frozen"))
    main(args)
    seed_everything(3)
    online0, target0 = build_networks(get_args_parser().parse_args(_pretrain_argv(data, tmp_path / "x")),
                                      torch.device("cpu"))
    target = torch.load(tmp_path / "out" / "checkpoint-te-0.pth", weights_only=True)["model"]
    online = torch.load(tmp_path / "out" / "checkpoint-0.pth", weights_only=True)["model"]
    assert all(torch.equal(v, target[k]) for k, v in target0.state_dict().items())        # never updated
    assert any(not torch.equal(v, online[k]) for k, v in online0.state_dict().items())    # the online net trained
    detail = (tmp_path / "out" / "log_detail.txt").read_text()
    assert "--epochs 1 <= --warmup_epochs 1" in detail and "--ema_mode frozen" in detail
    assert get_args_parser().parse_args([]).ema_mode == "update"
