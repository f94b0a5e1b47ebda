"""The pre-training scripts: spec 3.15 settings, environment overrides, and a real (tiny) CPU start."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from fsvfm.main_pretrain import get_args_parser
from fsvfm.util.args import set_effective_lr
from tests.helpers import REPO, TINY_FSFM
from tools.synthetic_data import make_synthetic_pretrain_dataset


def _script(size: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full_env.update(env)
    return subprocess.run(["bash", str(REPO / "scripts" / f"pretrain_FSVFM_ViT-{size}.sh"), *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("size,model,batch,accum", [("S", "fsfm_vit_small_patch16", 512, 2),
                                                    ("B", "fsfm_vit_base_patch16", 256, 4),
                                                    ("L", "fsfm_vit_large_patch16", 256, 4)])
def test_script_settings(size, model, batch, accum):
    # PYTHON=echo makes the shared launcher print the command line instead of running it.
    result = _script(size, {"PYTHON": "echo", "NPROC_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[0] == "fsvfm/main_pretrain.py"
    args = get_args_parser().parse_args(argv[1:])
    assert (args.model, args.batch_size, args.accum_iter) == (model, batch, accum)
    assert (args.epochs, args.input_size, args.mask_ratio, args.norm_pix_loss) == (600, 224, 0.75, True)
    assert (args.weight_sfr, args.weight_cl, args.cl_loss, args.weight_decay) == (0.007, 0.1, "SimSiam", 0.05)
    assert (args.blr, args.warmup_epochs, args.num_workers) == (1.5e-4, 40, 32)
    assert args.data_path == ["datasets/pretrain_datasets/VGG-Face2"]
    assert args.output_dir == f"checkpoint/pretrain_models/FS-VFM_ViT-{size}_VF2_600e"
    assert set_effective_lr(args, world_size=4) == 4096 and args.lr == pytest.approx(2.4e-3)


@pytest.mark.slow
def test_script_environment_overrides(tmp_path):
    env = {"PYTHON": "echo", "NPROC_PER_NODE": "1", "DATA_PATH": f"{tmp_path}/a {tmp_path}/b",
           "OUTPUT_DIR": str(tmp_path / "out"), "DEVICE": "cpu", "EXTRA_ARGS": "--epochs 1 --batch_size 4"}
    result = _script("B", env, "--seed", "5")
    args = get_args_parser().parse_args(shlex.split(result.stdout)[1:])
    assert args.data_path == [f"{tmp_path}/a", f"{tmp_path}/b"] and args.output_dir == str(tmp_path / "out")
    assert (args.device, args.epochs, args.batch_size, args.seed) == ("cpu", 1, 4, 5)


@pytest.mark.slow
def test_script_starts_training_on_cpu(tmp_path):
    data = make_synthetic_pretrain_dataset(tmp_path / "faces", 4, size=32)
    # EXTRA_ARGS is split at spaces, so the JSON is written without any
    overrides = json.dumps({k: v for k, v in TINY_FSFM.items() if k != "img_size"}, separators=(",", ":"))
    extra = f"--device cpu --epochs 1 --batch_size 2 --num_workers 0 --input_size 32 --model_overrides {overrides}"
    env = {"DATA_PATH": str(data), "OUTPUT_DIR": str(tmp_path / "out"), "NPROC_PER_NODE": "1",
           "EXTRA_ARGS": extra, "PYTHON": sys.executable}
    result = _script("B", env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoint-0.pth").is_file() and (tmp_path / "out" / "log.txt").is_file()
