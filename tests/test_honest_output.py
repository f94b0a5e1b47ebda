"""Toy and near-chance detectors are flagged where their scores are read (predict, the app, the test
program), from what the fine-tuning run stores in its checkpoint; a tiny scaled lr is warned about."""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from fsvfm import app, predict
from fsvfm.main_test_DfD import DFD_TASK
from fsvfm.util.args import set_effective_lr
from fsvfm.util.checkpoint import load_checkpoint, model_warnings
from tests.helpers import detector_checkpoint, eval_argv, run_tests_of, write_face_image

DEMO = "this detector was trained by the demo on toy data: its scores mean nothing"


def test_model_warnings_rules():
    ns = argparse.Namespace(epochs=1)        # released files store a Namespace
    assert model_warnings({"args": ns, "val_auc": 97.5}) == []
    assert model_warnings({"args": ns, "val_auc": 53.0}) == [
        "this detector is near chance on its own validation data (AUC 0.530 after 1 epoch(s)): its scores are not verdicts"]
    assert model_warnings({"args": {}, "val_auc": 44.0}) == [     # as wrong as it is right: still chance
        "this detector is near chance on its own validation data (AUC 0.440): its scores are not verdicts"]
    assert model_warnings({"args": {}, "val_auc": 30.0}) == []     # separates (inverted), not chance
    fas = {"args": {"epochs": 2}, "valid_arg": [0.7, 50.0, 0.5, 0.5, 0.52, 0.5, 50.0, 0.01]}
    assert model_warnings(fas)[0].startswith("this detector is near chance on its own validation data (AUC 0.520 ")
    assert model_warnings({"args": {"demo": True}}) == [DEMO]
    assert model_warnings({}) == []


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny fine-tuned detector, and a copy marked as a demo run at validation AUC 50.4%."""
    root = tmp_path_factory.mktemp("honest")
    ckpt = detector_checkpoint(root)
    data = load_checkpoint(ckpt)
    data["args"]["demo"], data["val_auc"] = True, 50.4
    toy = root / "ft" / "checkpoint-toy.pth"
    torch.save(data, toy)
    return ckpt, toy


def test_finetuning_stores_the_validation_metrics_of_the_saved_epoch(toy):
    ckpt, _ = toy
    data = load_checkpoint(ckpt)
    logged = [json.loads(line) for line in (ckpt.parent / "log.txt").read_text().splitlines()][-1]
    assert (data["val_auc"], data["val_acc"]) == (logged["val_auc"], logged["val_acc"])
    assert os.path.samefile(ckpt, ckpt.parent / "checkpoint-0.pth")     # the same epoch: one copy on disk


def test_predict_app_and_test_program_say_it(toy, tmp_path, capsys):
    _, path = toy
    near = "this detector is near chance on its own validation data (AUC 0.504 after 1 epoch(s)): " \
           "its scores are not verdicts"
    photo = write_face_image(tmp_path / "photo.jpg")
    assert predict.main(["--checkpoint", str(path), str(photo), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == [f"WARNING: {DEMO}", f"WARNING: {near}"]
    det = predict.Detector.from_checkpoint(path, device="cpu")
    assert app.warnings_note(det) == f"> **Warning**: {DEMO}\n\n> **Warning**: {near}\n\n"
    val = path.parent.parent / "data" / "val"
    lines = [f"{f},{0 if 'fake' in f.parent.name else 1}" for f in sorted(val.rglob("*.png"))]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    report = run_tests_of(DFD_TASK, eval_argv(path, tmp_path / "test", "--test_split", str(tmp_path / "list.txt"),
                                                "--delimiter_in_split", ","))
    assert report["warnings"] == [DEMO, near]
    assert f"WARNING: {DEMO}" in (tmp_path / "test" / "test_results.txt").read_text()


def test_tiny_effective_lr_is_warned(caplog):
    args = argparse.Namespace(batch_size=4, accum_iter=1, blr=1.5e-4, lr=None)
    with caplog.at_level(logging.WARNING):
        assert set_effective_lr(args, 1) == 4
    assert args.lr == pytest.approx(2.34375e-06)
    assert "effective lr 2.34e-06 = --blr 1.50e-04 x effective batch 4 / 256 is tiny" in caplog.text
    caplog.clear()
    set_effective_lr(argparse.Namespace(batch_size=256, accum_iter=1, blr=1.5e-4, lr=None), 1)
    assert caplog.text == ""
