"""N-class detectors end to end: the released unified detector's file structure scored by predict, class names
resolved (stored, known release, task, unnamed), ``--task Unified`` fine-tuning and testing with N-class metrics."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fsvfm import predict
from fsvfm.metrics import OneClassError, multiclass_metrics
from fsvfm.registry import create_model
from fsvfm.tasks import DFD_TASK, UNIFIED_TASK, TestSet
from fsvfm.util.checkpoint import load_checkpoint
from fsvfm.util.naming import UNIFIED_RELEASE_PATH, checkpoint_vocabulary
from tests.helpers import (
    SHARED,
    UNIFIED_CLASSES,
    eval_argv,
    faces_dir,
    run_tests_of,
    unified_detector_checkpoint,
)


@pytest.fixture(scope="module")
def released_unified(tmp_path_factory) -> Path:
    """The unified detector as the original fine-tuning program saved it: ViT-B/16 (global pooling) with a 4-way
    head, keys model / optimizer / epoch / scaler / args (an argparse.Namespace), at its repository path."""
    ref = SHARED / "fixtures" / "reference_state_dict_shapes.json"
    if not ref.is_file():
        pytest.skip(f"needs {ref} (the original's parameter names and shapes, in the workspace's shared/fixtures "
                    "folder beside the repository)")
    shapes = json.loads(ref.read_text())["vit_base_patch16:global_pool=True"]
    torch.manual_seed(0)
    model = create_model("vit_base_patch16", family="classifier", num_classes=4, global_pool=True)
    state = model.state_dict()
    want = {k: [4, *v[1:]] if k.startswith("head.") else v for k, v in shapes.items()}
    assert {k: list(t.shape) for k, t in state.items()} == want  # the released names and shapes, 4 outputs
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 2.0, 0.5, -1.0]))  # a known winner: deepfake
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    args = argparse.Namespace(model="vit_base_patch16", nb_classes=4, input_size=224, global_pool=True,
                              drop_path=0.1, normalize_from_IMN=False, apply_simple_augment=True)
    path = tmp_path_factory.mktemp("hub") / "checkpoint" / UNIFIED_RELEASE_PATH
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 9,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}, "args": args}, path)
    return path


def test_released_unified_detector_scored_by_predict(released_unified, tmp_path, capsys):
    photo = faces_dir() / "Tom_Cruise_avp_2014_4.jpg"
    out = tmp_path / "out.json"
    rc = predict.main(["--checkpoint", str(released_unified), str(photo), "--output", str(out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "4 classes (real, deepfake, diffusion, spoof)" in printed
    (record,) = json.loads(out.read_text())
    face = record["faces"][0]
    assert list(face["scores"]) == list(UNIFIED_CLASSES) and "score_real" not in face and "score_real" not in record
    assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    assert face["label"] == max(face["scores"], key=face["scores"].get) == record["label"]
    assert record["scores"] == pytest.approx(face["scores"]) and len(record["faces"]) == 1
    assert printed.splitlines()[2].split()[1] == record["label"]

    csv_out = tmp_path / "out.csv"
    assert predict.main(["--checkpoint", str(released_unified), str(photo), "--output", str(csv_out), "--device", "cpu"]) == 0
    header, row = csv_out.read_text().splitlines()[:2]
    assert header.split(",")[8:] == ["score_real", "score_deepfake", "score_diffusion", "score_spoof", "label",
                                     "input_label", "error", "warning"]
    assert row.split(",")[12] == face["label"]


def test_unnamed_classes_are_class_i_with_a_warning(released_unified, tmp_path, caplog):
    copy = tmp_path / "renamed.pth"
    shutil.copyfile(released_unified, copy)
    with caplog.at_level(logging.WARNING):
        det = predict.Detector.from_checkpoint(copy, device="cpu", detect=False)
    assert det.classes.names == ("class_0", "class_1", "class_2", "class_3")
    assert "has 4 classes and names none of them" in caplog.text and "--classes" in caplog.text
    rgb = np.full((64, 64, 3), 120, np.uint8)
    assert list(det.predict(rgb)["faces"][0]["scores"]) == ["class_0", "class_1", "class_2", "class_3"]
    named = predict.Detector.from_checkpoint(copy, device="cpu", detect=False, classes=list(UNIFIED_CLASSES))
    assert named.classes.names == UNIFIED_CLASSES
    assert predict.main(["--checkpoint", str(copy), "--classes", "a,b", "--no_detect", str(tmp_path)]) == 2


def test_class_resolution_order():
    dfd = DFD_TASK.vocabulary
    assert checkpoint_vocabulary({}, ["x.pth"], 2, dfd) == (dfd, "task")
    assert checkpoint_vocabulary({"classes": ["fake", "real"]}, ["x.pth"], 2, dfd) == (dfd, "checkpoint")
    vocab, source = checkpoint_vocabulary({"classes": ["cat", "Live", "dog"]}, ["x.pth"], 3, dfd)
    assert (vocab.names, vocab.positive, source) == (("cat", "live", "dog"), 1, "checkpoint")
    vocab, source = checkpoint_vocabulary({}, [f"/cache/snapshots/abc/{UNIFIED_RELEASE_PATH}"], 4, dfd)
    assert (vocab.names, vocab.display_names[3], source) == (UNIFIED_CLASSES, "Spoofing & Presentation attacks",
                                                             "known release")
    with pytest.raises(ValueError, match="names 2 classes"):
        checkpoint_vocabulary({"classes": ["a", "b"]}, ["x.pth"], 3, dfd)


def test_multiclass_metrics_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    probs = np.array([[.7, .1, .2], [.3, .6, .1], [.1, .8, .1], [.2, .5, .3], [.1, .1, .8], [.5, .2, .3]])
    m = multiclass_metrics(labels, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["acc"] == pytest.approx(400 / 6) and m["balanced_acc"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    # class a: positives .7 .3 vs negatives .1 .2 .1 .5 -> 7 of 8 pairs ranked right (.3 < .5)
    assert m["per_class"]["a"]["auc"] == pytest.approx(100 * 7 / 8)
    # class b: positives .8 .5 vs negatives .1 .6 .1 .2 -> 7 of 8 (.5 < .6); class c: .8 .3 vs .2 .1 .1 .3 -> 7.5 of 8
    assert m["per_class"]["b"]["auc"] == pytest.approx(100 * 7 / 8)
    assert m["per_class"]["c"]["auc"] == pytest.approx(100 * 7.5 / 8) and m["per_class"]["c"]["recall"] == pytest.approx(50.0)
    assert m["macro_auc"] == pytest.approx(np.mean([v["auc"] for v in m["per_class"].values()]))
    with pytest.raises(OneClassError, match="class \\['b'\\]"):
        multiclass_metrics([1, 1], probs[:2], ["a", "b", "c"])


def test_finetune_and_test_a_4_class_detector(tmp_path):
    ckpt = unified_detector_checkpoint(tmp_path)
    saved = load_checkpoint(ckpt)
    assert saved["task"] == "Unified" and saved["classes"] == list(UNIFIED_CLASSES)
    assert saved["model"]["head.weight"].shape[0] == 4 and saved["args"]["nb_classes"] == 4
    log = [json.loads(line) for line in (ckpt.parent / "log.txt").read_text().splitlines()]
    # the logged validation AUC is the macro AUC of the same checkpoint tested on the val split
    val_task = dataclasses.replace(UNIFIED_TASK, test_sets=(TestSet("val", ".", split="val"),))
    val = run_tests_of(val_task, eval_argv(ckpt, tmp_path / "val", "--test_root", str(tmp_path / "data4"),
                                             "--apply_simple_augment"))
    assert log[-1]["val_auc"] == pytest.approx(val["results"]["val"]["frame"]["macro_auc"], abs=1e-9)

    out = tmp_path / "test"
    report = run_tests_of(DFD_TASK, eval_argv(ckpt, out, "--task", "Unified", "--test_root", str(tmp_path / "data4")),
                            also=(UNIFIED_TASK,))
    written = json.loads((out / "test_results.json").read_text())
    assert written["classes"] == list(UNIFIED_CLASSES) and written["metric_mode"] == "multiclass"
    frame = written["results"]["test"]["frame"]
    assert frame == report["results"]["test"]["frame"]
    assert list(frame["per_class"]) == list(UNIFIED_CLASSES)
    assert [c["num_samples"] for c in frame["per_class"].values()] == [2, 2, 2, 2]
    matrix = np.array(frame["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix.sum(axis=1).tolist() == [2, 2, 2, 2]
    assert frame["acc"] == pytest.approx(100 * np.trace(matrix) / 8)
    assert frame["macro_auc"] == pytest.approx(np.mean([c["auc"] for c in frame["per_class"].values()]))
    rows = (out / "scores_test_frames.csv").read_text().splitlines()
    assert rows[0] == "path,video,label,pred,score_real,score_deepfake,score_diffusion,score_spoof" and len(rows) == 9
    assert "macro AUC (one-vs-rest)" in (out / "test_results.txt").read_text()

    # the binary DfD test refuses it with the fix, rather than mislabelling its classes
    with pytest.raises(ValueError, match="test it with --task Unified"):
        run_tests_of(DFD_TASK, eval_argv(ckpt, tmp_path / "t2", "--test_root", str(tmp_path / "data4")))
