"""The run_DfD-*/run_DiFF-* scripts: the table of spec 4.12, overrides, and one real tiny run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsvfm import evaluation, main_finetune_DfD
from fsvfm.tasks import get_task
from tests.helpers import MODEL_KWARGS, REPO, dry_run, make_split_tree, write_pretrain_checkpoint

ROWS = {  # script: (model, pre-trained file, blr, layer decay, weight decay, output tag, test program)
    "run_DfD-ViT-S.sh": ("vit_small_patch16", "FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth", "2e-4", "0.65", "0.03",
                         "ViT-S_VF2_600e/FT_on_FF++_c23_32frames", "main_test_DfD.py"),
    "run_DfD-ViT-B.sh": ("vit_base_patch16", "FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth", "2e-4", "0.6", "0.03",
                         "ViT-B_VF2_600e/FT_on_FF++_c23_32frames", "main_test_DfD.py"),
    "run_DfD-ViT-L.sh": ("vit_large_patch16", "FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth", "5e-5", "0.90", "0.01",
                         "ViT-L_VF2_600e/FT_on_FF++_c23_32frames", "main_test_DfD.py"),
    "run_DiFF-ViT-S.sh": ("vit_small_patch16", "FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth", "5e-5", "0.95", "0.05",
                          "ViT-S_VF2_600e/FT_on_FF++_DF_c23_32frames", "main_test_DiFF.py"),
    "run_DiFF-ViT-B.sh": ("vit_base_patch16", "FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth", "5e-5", "0.90", "0.03",
                          "ViT-B_VF2_600e/FT_on_FF++_DF_c23_32frames", "main_test_DiFF.py"),
    "run_DiFF-ViT-L.sh": ("vit_large_patch16", "FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth", "5e-5", "0.90", "0.05",
                          "ViT-L_VF2_600e/FT_on_FF++_DF_c23_32frames", "main_test_DiFF.py"),
    "run_DiFF-ViT-B_400e_FSFM.sh": ("vit_base_patch16", "VF2_ViT-B/checkpoint-400.pth", "1e-4", "0.90", "0.03",
                                    "ViT-B_VF2_400e/FT_on_FF++_DF_c23_32frames", "main_test_DiFF.py"),
}
CKPT = {"S": "FS-VFM_ViT-S_VF2_600e/checkpoint-599.pth", "B": "FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth",
        "L": "FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth"}
MODEL = {"S": "vit_small_patch16", "B": "vit_base_patch16", "L": "vit_large_patch16"}
ADAPTER_ROWS = {  # spec 7.6: task, size -> batch/GPU, epochs, blr, weight_cl, master port
    ("DfD", "S"): ("256", "60", "1e-3", "0.01", "29521"), ("DfD", "B"): ("128", "50", "5e-3", "0.01", "29503"),
    ("DfD", "L"): ("128", "50", "1e-2", "0.1", "29502"), ("DiFF", "S"): ("128", "60", "1e-2", "0.01", "29503"),
    ("DiFF", "B"): ("128", "50", "1e-2", "0.05", "29503"), ("DiFF", "L"): ("512", "50", "5e-3", "0.1", "29501"),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(ROWS))
def test_script_settings(script, tmp_path):
    model, ckpt, blr, ld, wd, tag, test_program = ROWS[script]
    ft, test = dry_run(script, tmp_path)  # any working directory
    assert ft["program"] == "fsvfm/main_finetune_DfD.py" and test["program"] == f"fsvfm/{test_program}"
    assert ft["--model"] == test["--model"] == model
    assert ft["--finetune"] == f"checkpoint/pretrained_models/{ckpt}"
    assert (ft["--blr"], ft["--layer_decay"], ft["--weight_decay"]) == (blr, ld, wd)
    assert (ft["--batch_size"], ft["--epochs"], ft["--mixup"], ft["--cutmix"]) == ("32", "10", "0.8", "1.0")
    assert {"--apply_simple_augment", "--dist_eval"} <= set(ft)
    assert ft["--output_dir"] == f"checkpoint/finetuned_models/{tag}"
    assert ("DS_FF++_all_cls/c23" if "DfD" in script else "DS_FF++_each_cls/c23/DeepFakes") in ft["--finetune_data_path"]
    assert test["--resume"] == f"checkpoint/finetuned_models/{tag}/checkpoint-min_val_loss.pth"
    assert "--apply_simple_augment" not in test  # the released numbers used the full resize


@pytest.mark.slow
@pytest.mark.parametrize("task, size", sorted(ADAPTER_ROWS))
def test_fs_adapter_script_settings(task, size, tmp_path):
    batch, epochs, blr, weight_cl, port = ADAPTER_ROWS[task, size]
    ft, test = dry_run(f"run_{task}-FS-Adapter-ViT-{size}.sh", tmp_path)
    model = f"{MODEL[size]}_fs_adapter"
    assert ft["program"] == "fsvfm/main_finetune_DfD.py" and test["program"] == f"fsvfm/main_test_{task}.py"
    assert ft["--model"] == test["--model"] == model
    assert ft["--finetune"] == f"checkpoint/pretrained_models/{CKPT[size]}"
    assert (ft["--batch_size"], ft["--epochs"], ft["--blr"], ft["--weight_cl"]) == (batch, epochs, blr, weight_cl)
    assert (ft["--layer_decay"], ft["--weight_decay"], ft["--trainable_modules"], ft["--temperature"]) == (
        "0", "0", "fs-adapter", "0.07")
    assert (ft["--drop_path"], ft["--reprob"], ft["--mixup"], ft["--cutmix"]) == ("0.1", "0.25", "0.8", "1.0")
    assert {"--apply_simple_augment", "--dist_eval"} <= set(ft)
    run = "FT_on_FF++_c23_32frames" if task == "DfD" else "FT_on_FF++_DF_c23_32frames"
    out = f"checkpoint/finetuned_models_FS-Adapter/ViT-{size}_VF2_600e/{run}"
    assert ft["--output_dir"] == out and test["--resume"] == f"{out}/checkpoint-min_val_loss.pth"
    assert (test["--nb_classes"], test["--batch_size"], test["--output_dir"]) == ("2", "320", f"{out}/experiments_test/")
    assert ("DS_FF++_all_cls/c23" if task == "DfD" else "DS_FF++_each_cls/c23/DeepFakes") in ft["--finetune_data_path"]
    assert ft["MASTER_PORT"] == test["MASTER_PORT"] == port and ft["NPROC_PER_NODE"] == "2"
    # the programs accept the commands: adapter flags parsed, the test rebuilds the reduction from the checkpoint
    args = main_finetune_DfD.get_args_parser().parse_args(ft["argv"])
    assert (args.model, args.trainable_modules, args.weight_cl, args.temperature, args.adapter_reduction) == (
        model, "fs-adapter", float(weight_cl), 0.07, 4)
    assert (args.layer_decay, args.weight_decay, args.train_fc_norm) == (0.0, 0.0, False)
    test_args = evaluation.test_parser(get_task(task)).parse_args(test["argv"])
    assert test_args.model == model and test_args.adapter_reduction is None


@pytest.mark.slow
def test_script_overrides(tmp_path):
    ft, test = dry_run("run_DfD-ViT-S.sh", tmp_path, BLR="1e-3", OUTPUT_ROOT="/x", DATA_ROOT="/d",
                        TEST_EXTRA_ARGS="--device cpu")
    assert ft["--blr"] == "1e-3" and ft["--output_dir"].startswith("/x/ViT-S_VF2_600e")
    assert ft["--finetune_data_path"].startswith("/d/") and test["--test_root"] == "/d" and test["--device"] == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("script, model", [("run_DfD-ViT-S.sh", "vit_small_patch16"),
                                           ("run_DfD-FS-Adapter-ViT-S.sh", "vit_small_patch16_fs_adapter")])
def test_script_runs_tiny_end_to_end(tmp_path, script, model):
    ckpt = write_pretrain_checkpoint(tmp_path / "pretrain")
    data = make_split_tree(tmp_path / "data", "train", videos=2, frames=2)
    make_split_tree(data, "val", videos=1, frames=2)
    folder = tmp_path / "tests" / "deepfakes_detection" / "DFDC" / "32_frames"
    make_split_tree(folder, "test", videos=2, frames=2, classes=("fake", "real"))
    out = tmp_path / "out"
    env = {**os.environ, "PRETRAINED": str(ckpt), "FINETUNE_DATA_PATH": str(data), "OUTPUT_DIR": str(out),
           "TEST_ROOT": str(tmp_path / "tests"), "NPROC_PER_NODE": "1", "BATCH_SIZE": "4", "EPOCHS": "1",
           "PYTHON": sys.executable, "TEST_EXTRA_ARGS": "--device cpu --input_size 32 --num_workers 0"}
    flags = ["--device", "cpu", "--input_size", "32", "--model_kwargs", MODEL_KWARGS, "--num_workers", "0",
             "--warmup_epochs", "1"]
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), *flags], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "experiments_test" / "test_results.json").read_text())
    assert list(report["results"]) == ["DFDC"] and report["results"]["DFDC"]["num_images"] == 8
    assert report["model"] == model
