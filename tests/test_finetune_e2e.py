"""Fine-tune a tiny ViT from a pre-training checkpoint, then test it (in-process, CPU)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsvfm import evaluation, main_finetune_DfD
from fsvfm.finetune_setup import load_classifier_from_checkpoint, load_pretrained_encoder
from fsvfm.main_test_DfD import DFD_TASK, DFD_TEST_SETS
from fsvfm.metrics import rates_at, roc_eer_threshold
from fsvfm.util.checkpoint import CheckpointError, load_checkpoint
from fsvfm.util.norm_stats import STATS_FILENAME, read_mean_std
from tests.helpers import (
    PRETRAIN_STATS,
    eval_argv,
    finetune_argv,
    make_split_tree,
    pretrain_with_main,
    run_tests_of,
    tiny_classifier,
    write_image,
    write_pretrain_checkpoint,
)


def test_pretrained_encoder_missing_and_ignored_keys(workspace, tmp_path):
    _, ckpt, _ = workspace
    model = tiny_classifier()
    info = load_pretrained_encoder(model, ckpt)
    assert info["missing"] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_embed.weight"} <= set(info["ignored"])
    assert not any(k.startswith(("blocks.", "patch_embed.")) for k in info["ignored"])
    assert 0 < model.head.weight.std() < 1e-4 and torch.all(model.head.bias == 0)
    sd = load_checkpoint(ckpt)["model"]
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])

    info = load_pretrained_encoder(tiny_classifier(global_pool=False), ckpt)
    assert info["missing"] == ["head.bias", "head.weight"] and "norm.weight" not in info["ignored"]

    bigger = tiny_classifier(img_size=48)  # 6x6 grid vs the checkpoint's 4x4: pos_embed interpolated
    load_pretrained_encoder(bigger, ckpt)
    assert bigger.pos_embed.shape == (1, 37, 48)

    legacy = write_pretrain_checkpoint(tmp_path / "legacy", legacy=True)
    assert load_pretrained_encoder(tiny_classifier(), legacy)["missing"][-1] == "head.weight"

    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="blocks.1"):
        load_pretrained_encoder(tiny_classifier(), tmp_path / "partial.pth")


def _make_test_root(root: Path) -> Path:
    for key in ("Celeb-DF-v1", "DFDC"):
        folder = next(t.folder for t in DFD_TEST_SETS if t.name == key)
        make_split_tree(root / folder, "test", videos=2, frames=2, classes=("fake", "real"))
    return root


def _frame_scores(model, transform, folder: Path) -> tuple[list[int], list[float], dict[str, list[float]]]:
    """Labels, P(real) and per-video scores of every image under ``folder/{fake,real}``."""
    labels, scores, videos = [], [], {}
    for img in sorted(folder.rglob("*.png")):
        with Image.open(img) as im, torch.no_grad():
            score = float(model(transform(im.convert("RGB"))[None]).softmax(-1)[0, 1])
        labels.append(int(img.parent.name.startswith("real")))
        scores.append(score)
        videos.setdefault(f"{img.parent.name}/{img.name.split('_frame_')[0]}", []).append(score)
    return labels, scores, videos


def test_finetune_then_test(workspace):
    root, ckpt, data = workspace
    out = root / "run"
    # head initialised at std 2e-5: the untrained validation loss is ln 2 to 4 decimals
    result = main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--lr", "5e-3", "--warmup_epochs", "0"))
    assert result["last_val"]["loss"] < 0.65 < math.log(2)  # it learned (separable brightness classes)
    assert result["last_val"]["acc"] == 100.0
    for name in ("checkpoint-min_val_loss.pth", "checkpoint-1.pth", "log.txt", "log_detail.txt", STATS_FILENAME):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert read_mean_std(out / STATS_FILENAME) == read_mean_std(ckpt.parent / STATS_FILENAME)
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"train_lr", "train_loss", "val_loss", "val_auc", "epoch", "n_parameters"} <= set(records[0])
    assert result["min_val_loss"] == pytest.approx(min(r["val_loss"] for r in records))
    saved = load_checkpoint(out / "checkpoint-1.pth")
    assert saved["epoch"] == 1 and saved["model_name"] == "vit_small_patch16" and saved["task"] == "DfD"
    assert saved["norm_stats"] == {"mean": PRETRAIN_STATS[0], "std": PRETRAIN_STATS[1]}
    assert "head.weight" in saved["model"]

    test_root = _make_test_root(root / "tests_root")
    test_out = out / "experiments_test"
    report = run_tests_of(DFD_TASK, eval_argv(out / "checkpoint-min_val_loss.pth", test_out,
                                                                "--test_root", str(test_root)))
    assert list(report["results"]) == ["Celeb-DF-v1", "DFDC"]
    assert report["norm_stats"]["source"] == "checkpoint norm_stats" and report["model"] == "vit_small_patch16"
    model, transform, info = load_classifier_from_checkpoint(out / "checkpoint-min_val_loss.pth", input_size=32)
    assert info["model"] == "vit_small_patch16" and info["mean"] == PRETRAIN_STATS[0]
    for name, res in report["results"].items():
        assert res["num_images"] == 8 and res["video"]["num_videos"] == 4
        # the public rebuild function scores exactly as the test program did
        folder = test_root / next(t.folder for t in DFD_TEST_SETS if t.name == name) / "test"
        labels, scores, videos = _frame_scores(model, transform, folder)
        assert res["frame"]["auc"] == pytest.approx(100 * roc_auc_score(labels, scores))
        assert (test_out / f"roc_{name}.png").stat().st_size > 1000
        rows = list(csv.DictReader((test_out / f"scores_{name}.csv").open()))
        assert len(rows) == 4 and {r["video"]: float(r["score_real"]) for r in rows} == pytest.approx(
            {v: float(np.mean(s)) for v, s in videos.items()}, abs=1e-6)
        assert res["video"]["auc"] == pytest.approx(100 * roc_auc_score(
            [int(r["label"]) for r in rows], [float(r["score_real"]) for r in rows]))
    text = (test_out / "test_results.txt").read_text()
    assert text.count("FRAME-LEVEL") == 2 and text.count("VIDEO-LEVEL") == 2 and "Testing time" in text
    assert json.loads((test_out / "test_results.json").read_text())["results"].keys() == report["results"].keys()
    # TensorBoard: the ROC figure and the AUCs of each test set
    events = EventAccumulator(str(test_out), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert set(events.Tags()["images"]) == {f"roc/{n}" for n in report["results"]}
    for name, res in report["results"].items():
        for level in ("frame", "video"):
            (point,) = events.Scalars(f"test_auc/{name}/{level}")
            assert point.value == pytest.approx(res[level]["auc"])

    # a threshold chosen on the validation folder, applied to each test set
    thr = run_tests_of(DFD_TASK, eval_argv(out / "checkpoint-min_val_loss.pth", out / "thr", "--test_root",
                                             str(test_root), "--metric_mode", "image_val_threshold",
                                             "--finetune_data_path", str(data)))
    v_labels, v_scores, _ = _frame_scores(model, transform, data / "val")
    threshold = roc_eer_threshold(v_labels, v_scores)
    for name, res in thr["results"].items():
        folder = test_root / next(t.folder for t in DFD_TEST_SETS if t.name == name) / "test"
        labels, scores, _ = _frame_scores(model, transform, folder)
        assert res["frame"]["val_threshold"] == pytest.approx(threshold)
        assert res["frame"]["hter_at_val_threshold"] == pytest.approx(rates_at(labels, scores, threshold)["hter"])

    # auto-resume continues after the last saved epoch
    main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--epochs", "3", "--auto_resume"))
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]


def test_test_sets_selection(tmp_path):
    root = _make_test_root(tmp_path)
    assert [t.name for t in evaluation.select_test_sets(DFD_TEST_SETS, str(root), None)] == ["Celeb-DF-v1", "DFDC"]
    with pytest.raises(FileNotFoundError, match="WDF"):
        evaluation.select_test_sets(DFD_TEST_SETS, str(root), ["DFDC", "WDF"])
    with pytest.raises(ValueError, match="unknown test set"):
        evaluation.select_test_sets(DFD_TEST_SETS, str(root), ["nope"])


def test_split_files_finetune_and_list_test(workspace, tmp_path):
    root, ckpt, data = workspace
    for split in ("train", "val"):
        lines = [f"{p.relative_to(data)}, {0 if 'fake' in p.parent.name else 1}"
                 for p in sorted((data / split).rglob("*.png"))]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    argv = finetune_argv(ckpt, data, out, "--epochs", "1", "--train_split", str(tmp_path / "train.txt"),
                         "--val_split", str(tmp_path / "val.txt"), "--dataset_abs_path", str(data),
                         "--delimiter_in_spilt", ", ")
    argv.remove("--finetune_data_path")
    argv.remove(str(data))
    main_finetune_DfD.cli(argv)
    # --test_split list mode without --dataset_abs_path (F1): absolute paths, image-level metrics
    abs_lines = [f"{data / line.split(', ')[0]},{line.split(', ')[1]}"
                 for line in (tmp_path / "val.txt").read_text().splitlines()]
    (tmp_path / "list.txt").write_text("\n".join(abs_lines) + "\n")
    report = run_tests_of(DFD_TASK, eval_argv(
        out / "checkpoint-0.pth", tmp_path / "test", "--test_split", str(tmp_path / "list.txt"),
        "--delimiter_in_split", ","))
    assert report["metric_mode"] == "image" and report["results"]["list"]["num_images"] == 8
    assert "video" not in report["results"]["list"]


def test_missing_data_reported_before_training(workspace, tmp_path, capsys):
    _, ckpt, _ = workspace
    with pytest.raises(SystemExit) as stop:
        main_finetune_DfD.cli(finetune_argv(ckpt, tmp_path / "nowhere", tmp_path / "out"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and ": error: " in last and str(tmp_path / "nowhere") in last
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_stats_fallback_warns(workspace, tmp_path, caplog):
    _, ckpt, data = workspace
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ckpt.pth").write_bytes(ckpt.read_bytes())  # no statistics file next to it
    write_image(tmp_path / "unused.png", True, 0)
    with caplog.at_level("WARNING"):
        main_finetune_DfD.cli(finetune_argv(bare / "ckpt.pth", data, tmp_path / "out", "--epochs", "1"))
    assert "VGGFace2" in caplog.text and str(bare / STATS_FILENAME) in caplog.text
    assert "--epochs 1 <= --warmup_epochs 1: the learning rate never leaves" in caplog.text


def test_finetune_from_main_pretrain_output(workspace, tmp_path):
    """The real chain: main_pretrain's checkpoint and statistics file feed the fine-tuning program."""
    _, _, data = workspace
    ckpt = pretrain_with_main(tmp_path)
    pre = ckpt.parent
    out = tmp_path / "ft"
    main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--epochs", "1"))
    saved = load_checkpoint(out / "checkpoint-0.pth")
    mean, std = read_mean_std(pre / STATS_FILENAME)
    assert saved["norm_stats"] == {"mean": mean, "std": std}
    assert read_mean_std(out / STATS_FILENAME) == (mean, std)


def test_one_class_test_set_is_reported_and_the_others_still_run(workspace, tmp_path):
    root, ckpt, data = workspace
    out = tmp_path / "ft"
    main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--epochs", "1"))
    test_root = _make_test_root(tmp_path / "tests_root")
    dfdc = next(t.folder for t in DFD_TEST_SETS if t.name == "DFDC")
    for img in (test_root / dfdc / "test" / "real").iterdir():
        img.unlink()
    (test_root / dfdc / "test" / "real").rmdir()
    report = run_tests_of(DFD_TASK, eval_argv(out / "checkpoint-min_val_loss.pth",
                                                                tmp_path / "test", "--test_root", str(test_root)))
    assert report["results"]["DFDC"]["num_images"] == 4 and "both fake=0 and real=1" in report["results"]["DFDC"]["error"]
    assert report["results"]["Celeb-DF-v1"]["num_images"] == 8 and "error" not in report["results"]["Celeb-DF-v1"]
    text = (tmp_path / "test" / "test_results.txt").read_text()
    assert "DFDC: not evaluated: AUC is undefined" in text and text.count("FRAME-LEVEL") == 1
    assert json.loads((tmp_path / "test" / "test_results.json").read_text())["results"]["DFDC"]["num_images"] == 4


def test_cls_token_and_bf16_through_the_main(workspace, tmp_path):
    _, ckpt, data = workspace
    out = tmp_path / "ft"
    main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--epochs", "1", "--cls_token", "--amp", "bf16"))
    saved = load_checkpoint(out / "checkpoint-0.pth")
    assert saved["args"]["global_pool"] is False and saved["args"]["amp"] == "bf16"
    assert "norm.weight" in saved["model"] and "fc_norm.weight" not in saved["model"]
    record = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert math.isfinite(record["train_loss"]) and record["train_skipped_batches"] == 0
    # the test program rebuilds pooling and input size from the checkpoint (no --cls_token, no --input_size)
    report = run_tests_of(DFD_TASK, ["--resume", str(out / "checkpoint-0.pth"), "--output_dir", str(tmp_path / "t"),
                                       "--test_split", str(_list_file(data / "val", tmp_path / "val.txt")),
                                       "--delimiter_in_split", ",", "--num_workers", "0", "--device", "cpu",
                                       "--amp", "bf16"])
    assert report["eval_transform"] == "full resize to 32" and report["results"]["val"]["num_images"] == 8
    model, _, info = load_classifier_from_checkpoint(out / "checkpoint-0.pth")
    assert model.global_pool == "token" and info["input_size"] == 32


def _list_file(folder: Path, path: Path) -> Path:
    path.write_text("".join(f"{p},{int(p.parent.name.startswith('real'))}\n" for p in sorted(folder.rglob("*.png"))))
    return path


def test_accum_iter_and_clip_grad_through_the_main(workspace, tmp_path):
    _, ckpt, data = workspace
    out = tmp_path / "ft"
    # 12 training images, batch 4 -> 3 iterations; --accum_iter 2 -> one optimizer step (the tail is dropped)
    main_finetune_DfD.cli(finetune_argv(ckpt, data, out, "--epochs", "1", "--accum_iter", "2", "--clip_grad", "0.5"))
    saved = load_checkpoint(out / "checkpoint-0.pth")
    assert {int(s["step"]) for s in saved["optimizer"]["state"].values()} == {1}
    assert saved["args"]["lr"] == pytest.approx(5e-3 * 4 * 2 / 256)  # effective batch includes accumulation
    record = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert record["train_grad_norm"] > 0 and math.isfinite(record["train_grad_norm"])
