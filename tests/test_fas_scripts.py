"""The run_FAS-* scripts: the settings table of spec 6.9 / 7.5, the WCS script, overrides, and one real tiny run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import MODEL_KWARGS, REPO, dry_run, read_report, write_pretrain_checkpoint
from tools.synthetic_data import make_synthetic_fas_tree

CKPT = {"S": "FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth", "B": "FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth",
        "L": "FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth"}
MODEL = {"S": "vit_small_patch16", "B": "vit_base_patch16", "L": "vit_large_patch16"}
FULL = {"S": ("2.5e-5", "1e-6"), "B": ("2.5e-5", "1e-6"), "L": ("1e-5", "1e-5")}  # spec 6.9: lr, wd
ADAPTER = {"S": ("0.1", "5e-2", "1e-6"), "B": ("0.1", "5e-2", "5e-5"), "L": ("0.2", "1e-3", "1e-7")}  # weight_cl, lr, wd
MCIO = [("M", "OCI2M"), ("C", "OMI2C"), ("I", "OCM2I"), ("O", "ICM2O")]
DATA = "datasets/finetune_datasets/face_anti_spoofing/data"


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(FULL))
def test_full_fine_tuning_scripts(size, tmp_path):
    jobs = dry_run(f"run_FAS-ViT-{size}.sh", tmp_path)  # any working directory
    out = f"checkpoint/finetuned_models/ViT-{size}_VF2_600e/MCIO_protocol"
    assert [(j["--config"], j["--op_dir"]) for j in jobs] == [(c, f"{out}/{n}/") for c, n in MCIO]
    for job in jobs:
        assert job["program"] == "fsvfm/main_finetune_FAS.py" and job["NPROC_PER_NODE"] == "1"
        assert (job["--model"], job["--pt_model"]) == (MODEL[size], f"checkpoint/pretrained_models/{CKPT[size]}")
        assert (job["--lr"], job["--wd"], job["--fas_data_root"]) == (*FULL[size], DATA)
        assert job["--report_logger_path"] == job["--op_dir"] + "performance.csv"
        assert "--trainable_modules" not in job and "--weight_cl" not in job


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(ADAPTER))
def test_fs_adapter_scripts(size, tmp_path):
    weight_cl, lr, wd = ADAPTER[size]
    jobs = dry_run(f"run_FAS-FS-Adapter-ViT-{size}.sh", tmp_path)
    out = f"checkpoint/finetuned_models_FS-Adapter/ViT-{size}_VF2_600e/MCIO_protocol"
    assert [(j["--config"], j["--op_dir"]) for j in jobs] == [(c, f"{out}/{c}/") for c, _ in MCIO]  # spec 7.5 folders
    for job in jobs:
        assert (job["--model"], job["--pt_model"]) == (f"{MODEL[size]}_fs_adapter", f"checkpoint/pretrained_models/{CKPT[size]}")
        assert (job["--weight_cl"], job["--lr"], job["--wd"]) == (weight_cl, lr, wd)
        assert (job["--trainable_modules"], job["--temperature"]) == ("fs-adapter", "0.07")
        assert "--runs" not in job and "--batch_size" not in job  # 3 runs, 24 per source and class: the defaults


@pytest.mark.slow
def test_wcs_script_and_overrides(tmp_path):
    jobs = dry_run("run_FAS-WCS.sh", tmp_path)
    assert [(j["--config"], j["--model"], j["--lr"]) for j in jobs] == [
        (c, "vit_base_patch16", "2.5e-5") for c in ("cefa", "surf", "wmca")]
    assert jobs[0]["--op_dir"] == "checkpoint/finetuned_models/ViT-B_VF2_600e/WCS_protocol/cefa/"
    jobs = dry_run("run_FAS-WCS.sh", tmp_path, SIZE="FS-Adapter-ViT-S", TARGETS="surf", LR="1e-2",
                    OUTPUT_DIR="/o", FAS_DATA_ROOT="/d", PRETRAINED="/p.pth", NPROC_PER_NODE="2")
    assert len(jobs) == 1 and (jobs[0]["--config"], jobs[0]["--lr"], jobs[0]["--wd"]) == ("surf", "1e-2", "1e-6")
    assert (jobs[0]["--op_dir"], jobs[0]["--fas_data_root"], jobs[0]["--pt_model"]) == ("/o/surf/", "/d", "/p.pth")
    assert jobs[0]["NPROC_PER_NODE"] == "2"
    bad = subprocess.run(["bash", str(REPO / "scripts" / "finetune_FAS.sh"), "MCIO", "ViT-X"], capture_output=True,
                         text=True, env={**os.environ, "DRY_RUN": "1"})
    assert bad.returncode == 2 and "unknown size: ViT-X" in bad.stderr


@pytest.mark.slow
def test_script_runs_tiny_end_to_end(tmp_path):
    data = make_synthetic_fas_tree(tmp_path / "data", n_videos=3, size=32)
    env = {**os.environ, "PRETRAINED": str(write_pretrain_checkpoint(tmp_path / "pre")), "FAS_DATA_ROOT": str(data),
           "OUTPUT_DIR": str(tmp_path / "out"), "TARGETS": "I", "PYTHON": sys.executable}
    flags = ["--device", "cpu", "--input_size", "32", "--model_kwargs", MODEL_KWARGS, "--iters", "2", "--eval_freq", "2",
             "--runs", "1", "--batch_size", "2"]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_FAS-ViT-S.sh"), *flags], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    header, rows = read_report(tmp_path / "out" / "OCM2I" / "performance.csv")
    assert header[-1] == "HTER@src_thr(oulu+casia+msu test)" and list(rows) == ["0", "Mean", "Std dev"]
    assert (tmp_path / "out" / "OCM2I" / "replay_vit_0_shot_checkpoint_run_0.pth.tar").is_file()
