"""Two gloo processes give the same metrics as one (validation and test programs), with set sizes
that do not divide by the world size, so padding duplicates would show."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from fsvfm.main_test_DfD import DFD_TASK, DFD_TEST_SETS
from fsvfm.tasks import TestSet
from tests.helpers import (
    REPO,
    eval_argv,
    finetune_argv,
    free_port,
    make_split_tree,
    run_tests_of,
    write_image,
    write_pretrain_checkpoint,
)

pytestmark = pytest.mark.slow


def _torchrun(script: str, argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), script, *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]


def test_two_process_dist_eval_matches_one_process(tmp_path):
    data = make_split_tree(tmp_path / "data", "train", videos=2, frames=4)
    make_split_tree(data, "val", videos=2, frames=2)
    write_image(data / "val" / "fake_four" / "extra_frame_0.png", False, 99)  # 9 images: odd
    ckpt = write_pretrain_checkpoint(tmp_path / "pretrain")
    out = tmp_path / "run"
    _torchrun("fsvfm/main_finetune_DfD.py", finetune_argv(ckpt, data, out, "--epochs", "1", "--dist_eval"))
    logged = json.loads((out / "log.txt").read_text().splitlines()[-1])

    # validation gathered over 2 ranks == the same checkpoint evaluated on the whole set in one process
    val_task = dataclasses.replace(DFD_TASK, test_sets=(TestSet("val", ".", split="val"),), metric_mode="image")
    one = run_tests_of(val_task, eval_argv(out / "checkpoint-0.pth", tmp_path / "val1",
                                                         "--test_root", str(data), "--apply_simple_augment"))
    res = one["results"]["val"]
    assert res["num_images"] == 9
    assert logged["val_loss"] == pytest.approx(res["loss"], abs=1e-6)
    assert logged["val_auc"] == pytest.approx(res["frame"]["auc"], abs=1e-9)

    # the test program on 2 ranks (shards gathered) == 1 rank, on sets of odd size
    root = tmp_path / "tests_root"
    folder = root / next(t.folder for t in DFD_TEST_SETS if t.name == "WDF")
    make_split_tree(folder, "test", videos=3, frames=3, classes=("fake", "real"))
    write_image(folder / "test" / "real" / "real9_frame_0.png", True, 7)  # 19 images
    argv = eval_argv(out / "checkpoint-0.pth", tmp_path / "t2", "--test_root", str(root), "--dist_eval")
    _torchrun("fsvfm/main_test_DfD.py", argv)
    two = json.loads((tmp_path / "t2" / "test_results.json").read_text())["results"]["WDF"]
    single = run_tests_of(DFD_TASK, eval_argv(out / "checkpoint-0.pth", tmp_path / "t1", "--test_root", str(root)))
    one = single["results"]["WDF"]
    assert two["num_images"] == one["num_images"] == 19
    assert two["video"]["num_videos"] == 7
    for level in ("frame", "video"):
        for key in ("acc", "balanced_acc", "auc", "eer"):
            assert two[level][key] == pytest.approx(one[level][key], abs=1e-9), (level, key)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert (tmp_path / "t2" / "scores_WDF.csv").read_text() == (tmp_path / "t1" / "scores_WDF.csv").read_text()
