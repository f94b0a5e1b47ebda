"""main_finetune_FAS.py on a generated MCIO/WCS tree (CPU, tiny ViT): protocol use, runs, report CSV, checkpoints,
the FS-Adapter variant, usage errors, and predict on a FAS checkpoint."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsvfm import main_finetune_FAS, main_test_FAS, predict
from fsvfm.data.fas import fas_transform, get_protocol
from fsvfm.engine_finetune import train_one_epoch
from fsvfm.metrics import METRIC_MODES, ScoredSet, fas_eer_states, fas_hter_at
from fsvfm.models_fas import create_fas_model
from fsvfm.registry import create_model
from fsvfm.tasks import fas as engine_fas
from fsvfm.util import images
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    model_state_from,
    save_checkpoint,
)
from fsvfm.util.train_step import StepConfig
from tests.helpers import (
    MODEL_KWARGS,
    PRETRAIN_STATS,
    TINY_FSFM,
    TINY_VIT,
    add_to_cache,
    faces_dir,
    read_report,
    tiny_classifier,
    write_pretrain_checkpoint,
)
from tools.synthetic_data import make_synthetic_fas_tree

ORIGINAL_KEYS = {"epoch", "state_dict", "valid_arg", "best_model_EER", "best_model_ACER", "best_model_ACC", "threshold"}


def fas_argv(pretrained: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "M", "--model", "vit_small_patch16", "--pt_model", str(pretrained), "--fas_data_root", str(data),
            "--iters", "4", "--eval_freq", "2", "--runs", "2", "--batch_size", "2", "--op_dir", str(out),
            "--report_logger_path", str(out / "performance.csv"), "--device", "cpu", "--input_size", "32",
            "--model_kwargs", MODEL_KWARGS, "--test_batch_size", "5", "--print_freq", "50", *extra]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fas_ft")
    return root, make_synthetic_fas_tree(root / "data", n_videos=3, size=32), write_pretrain_checkpoint(root / "pre")


@pytest.fixture(scope="module")
def trained(workspace):
    root, data, pre = workspace
    out = root / "out"
    assert main_finetune_FAS.cli(fas_argv(pre, data, out))["runs"]
    return out


# ----------------------------------------------------------------------------------- protocol
def test_protocol_table_decides_sources_target_and_held_out_data(workspace):
    _, data, _ = workspace
    tf = fas_transform(False, (0.5,) * 3, (0.5,) * 3, 32)
    for config, sources, target, held_out, frames in (
            ("M", ["oulu", "casia", "replay", "celeb"], "msu", ["oulu", "casia", "replay"], 2),
            ("cefa", ["wmca", "surf", "celeb"], "cefa", ["wmca", "surf"], 1)):  # WCS: one image per "video"
        args = engine_fas.fas_parser().parse_args(["--config", config, "--fas_data_root", str(data)])
        protocol = get_protocol(config)
        train, test = engine_fas.build_fas_datasets(args, protocol, tf, tf)
        assert [d for d, _, _ in train] == sources
        assert all(set(real.labels) == {1} and set(fake.labels) == {0} for _, real, fake in train)
        assert {Path(p).parts[-4] for p in test.paths} == {target}
        source, domains = engine_fas.build_source_test_set(protocol, data, tf)
        assert domains == held_out and {Path(p).parts[-4] for p in source.paths} == set(held_out)
        assert len(source) == len(held_out) * 2 * 3 * frames  # live + spoof, 3 videos each


def test_defaults_of_full_and_adapter_models():
    parse = engine_fas.fas_parser().parse_args
    full = parse(["--config", "M", "--scratch"])
    engine_fas.check_args(full)
    assert (full.model, full.iters, full.eval_freq, full.runs, full.batch_size, full.test_batch_size) == (
        "vit_base_patch16", 4001, 100, 5, 12, 512)
    schedule = engine_fas.fas_schedule(full)  # 40 intervals at a constant lr (min_lr = lr, no warm-up)
    assert (full.lr, full.wd, full.drop_path, schedule.intervals) == (1e-4, 1e-6, 0.0, 40)
    assert [schedule.lr(e) for e in (0.0, 0.5, 39.99)] == [1e-4] * 3 and full.pin_mem
    # fp32 by default, also on CUDA (the original's); the test program too
    assert full.amp == "none" and main_test_FAS.get_args_parser().parse_args(["--resume", "x", "--config", "M"]).amp == "none"
    assert parse(["--config", "M", "--amp", "bf16"]).amp == "bf16"
    adapter = parse(["--config", "O", "--model", "vit_small_patch16_fs_adapter", "--pt_model", "x.pth"])
    engine_fas.check_args(adapter)
    assert (adapter.runs, adapter.batch_size, adapter.weight_cl, adapter.temperature) == (3, 24, 0.1, 0.07)
    assert [parse(["--config", "M", *f]).scratch for f in ([], ["--scratch"], ["--scratch", "False"], ["--scratch", "true"])] == [
        False, True, False, True]  # S4: a real boolean


# --------------------------------------------------------------------------- two-run training
def test_report_csv_has_runs_mean_and_population_std(trained):
    header, rows = read_report(trained / "performance.csv")
    assert header == ["Run", "HTER", "AUC", "TPR@FPR=1%", "HTER@src_thr(oulu+casia+replay test)"]
    assert list(rows) == ["0", "1", "Mean", "Std dev"]
    runs = np.array([rows["0"], rows["1"]])
    assert rows["Mean"] == pytest.approx(runs.mean(axis=0).round(4).tolist(), abs=1e-4)
    assert rows["Std dev"] == pytest.approx((np.abs(runs[0] - runs[1]) / 2).tolist(), abs=1e-4)


def test_checkpoint_keys_and_strict_reload(trained):
    models = []
    for run, row in ((0, "0"), (1, "1")):
        ckpt = load_checkpoint(trained / f"msu_vit_0_shot_checkpoint_run_{run}.pth.tar")
        assert ORIGINAL_KEYS <= set(ckpt) and "model" not in ckpt
        assert (ckpt["task"], ckpt["model_name"], ckpt["run"]) == ("FAS", "fas_vit_small_patch16", run)
        assert ckpt["epoch"] == (ckpt["iteration"] + 1) // 2 and ckpt["iteration"] in (1, 3)
        hter = read_report(trained / "performance.csv")[1][row][0]
        assert ckpt["best_model_EER"] == pytest.approx(hter / 100, abs=1e-5) == ckpt["valid_arg"][3]
        assert ckpt["norm_stats"] == {"mean": PRETRAIN_STATS[0], "std": PRETRAIN_STATS[1]}
        model = create_fas_model("vit_small_patch16", **TINY_VIT)
        load_model_weights(model, model_state_from(ckpt), strict=True)
        models.append(model.eval())
    rebuilt, transform, info = engine_fas.load_fas_from_checkpoint(trained / "msu_vit_0_shot_checkpoint_run_0.pth.tar")
    assert (info["model"], info["input_size"], info["norm_source"]) == ("fas_vit_small_patch16", 32, "checkpoint norm_stats")
    x = transform(Image.new("RGB", (32, 32), (120, 80, 60)))[None]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), models[0](x, norm_flag=True)[0][:, 0])
        assert not torch.equal(rebuilt(x), models[1](x, norm_flag=True)[0][:, 0])  # runs differ (seeds 0, 1)


def test_log_files_have_a_row_per_evaluation(trained):
    detail = (trained / "log_detail.txt").read_text()
    rows = [line for line in detail.splitlines() if line.split("] ", 1)[-1].lstrip().split(" | ")[0] in ("1", "3")]
    assert len(rows) == 4  # 2 runs x 2 evaluations
    lines = [json.loads(x) for x in (trained / "log.txt").read_text().splitlines()]
    assert [(r["run"], r["iteration"]) for r in lines] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert all(r["train_lr"] == 1e-4 for r in lines)  # constant lr
    assert sorted(p.name for p in trained.iterdir() if p.is_dir()) == ["run_0", "run_1"]


# ----------------------------------------------------------------------------- metric mode
def test_fas_metric_mode_averages_videos_and_applies_a_source_threshold():
    # target: 3 live videos, 3 spoof videos, 2 frames each (frame scores average per video)
    names = [f"v{i}" for i in range(6) for _ in range(2)]
    labels = np.repeat([1, 1, 1, 0, 0, 0], 2)
    scores = np.array([.9, .7, .6, .6, .4, .2, .5, .3, .1, .1, .7, .5])  # videos: .8 .6 .3 | .4 .1 .6
    test = ScoredSet(labels, scores, (scores >= .5).astype(int), names)
    source = ScoredSet(np.array([1, 1, 0, 0]), np.array([.75, .95, .2, .7]), np.zeros(4, int), ["a", "b", "c", "d"])
    out = METRIC_MODES["fas"].compute(test, source)["fas"]
    v_probs, v_labels = np.array([.8, .6, .3, .4, .1, .6]), np.array([1, 1, 1, 0, 0, 0])
    eer, thr, _, _ = fas_eer_states(v_probs, v_labels)
    assert out["num_videos"] == 6 and out["threshold"] == thr and out["hter"] == pytest.approx(fas_hter_at(v_probs, v_labels, thr))
    assert out["auc"] == pytest.approx(6.5 / 9)  # live > spoof pairs: .8 > 3, .6 > 2 (+ a tie, 1/2), .3 > 1
    # source (live .75/.95, spoof .2/.7): FAR = FRR = 0 for thresholds in (.7, .75]; ties -> the last, .75
    assert out["threshold_src"] == 0.75
    # at .75: live .8 accepted, .6/.3 rejected (FRR 2/3); no spoof accepted (FAR 0)
    assert out["hter_src"] == pytest.approx(1 / 3) and out["acc_src"] == pytest.approx(4 / 6)
    assert "hter_src" not in METRIC_MODES["fas"].compute(test, None)["fas"]


# ---------------------------------------------------------------------------------- adapter
def test_adapter_step_trains_only_adapter_embedder_classifier(workspace):
    _, data, pre = workspace
    args = engine_fas.fas_parser().parse_args(
        ["--config", "M", "--model", "vit_small_patch16_fs_adapter", "--trainable_modules", "fs-adapter",
         "--pt_model", str(pre), "--fas_data_root", str(data), "--batch_size", "2", "--eval_freq", "2", "--iters", "2",
         "--input_size", "32", "--model_kwargs", MODEL_KWARGS, "--device", "cpu", "--print_freq", "50"])
    engine_fas.check_args(args)
    args.amp, args.distributed = "none", False
    task = engine_fas.FAS_TASK
    model = task.build_model(args)
    engine_fas.FASExperiment.load_encoder(argparse.Namespace(args=args, pt_state=engine_fas.load_pt_model(pre)[1]), model)
    task.configure_model(model, args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = engine_fas.fas_optimizer(model, args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for n, p in model.named_parameters() if n in trainable}
    assert trainable == {n for n in before if n.startswith(("embedder.bottleneck_layer_fc", "classifier."))
                         or ".adapter." in n or ".projector." in n}
    tf = fas_transform(True, (0.5,) * 3, (0.5,) * 3, 32)
    train, _ = engine_fas.build_fas_datasets(args, get_protocol("M"), tf, tf)
    stats = train_one_epoch(model, task.make_loss(torch.nn.CrossEntropyLoss(), args), task.build_train_loader(train, args, torch.device("cpu")),
                            optimizer, torch.device("cpu"), 0, NativeScalerWithGradNormCount("cpu", enabled=False),
                            StepConfig("none", print_freq=args.print_freq), lr_at=engine_fas.fas_schedule(args).lr)
    assert {"loss", "cls_loss", "con_loss", "acc"} <= set(stats)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith("backbone.vit.") and ".adapter." not in k and ".projector." not in k]
    assert frozen and not changed & set(frozen)  # backbone tensors bit-equal
    assert {k.replace("bottleneck_layer.0.", "bottleneck_layer_fc.") for k in changed} == trainable


def test_adapter_end_to_end_keeps_pretrained_encoder(workspace, tmp_path):
    _, data, pre = workspace
    argv = fas_argv(pre, data, tmp_path, "--model", "vit_small_patch16_fs_adapter", "--trainable_modules", "fs-adapter",
                    "--runs", "1", "--iters", "2", "--config", "O")
    assert main_finetune_FAS.cli(argv)["runs"]
    ckpt = load_checkpoint(tmp_path / "oulu_vit_0_shot_checkpoint_run_0.pth.tar")
    state, pretrained = ckpt["state_dict"], model_state_from(load_checkpoint(pre))
    encoder = [k for k in pretrained if k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed"))]
    assert encoder and all(torch.equal(state[f"backbone.vit.{k}"], pretrained[k]) for k in encoder)
    assert torch.equal(state["backbone.vit.fc_norm.weight"], torch.ones(48))  # A5: frozen at identity
    assert state["backbone.vit.head.weight"].shape == (2, 96) and state["embedder.bottleneck_layer_fc.weight"].shape == (512, 96)
    _, rows = read_report(tmp_path / "performance.csv")
    assert list(rows) == ["0", "Mean", "Std dev"] and rows["Std dev"] == [0.0] * 4
    model, _, info = engine_fas.load_fas_from_checkpoint(tmp_path / "oulu_vit_0_shot_checkpoint_run_0.pth.tar")
    assert info["model"] == "fas_vit_small_patch16_fs_adapter"


def test_released_layouts_load_by_their_weights(tmp_path):
    """A released ``.pth.tar`` holds only ``state_dict`` (+ metrics): the model is told from the weights."""
    with torch.device("meta"):
        for name in ("vit_base_patch16", "vit_large_patch16_fs_adapter", "vit_huge_patch14"):
            assert engine_fas.infer_fas_model_name(create_fas_model(name).state_dict()) == name
    with pytest.raises(CheckpointError, match="not a FAS checkpoint: no backbone.vit"):
        engine_fas.infer_fas_model_name({"cls_token": torch.zeros(1, 1, 384)})
    model = create_fas_model("vit_small_patch16").eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("embedder.bottleneck_layer.0.")}
    torch.save({"state_dict": state, "epoch": 3.0, "best_model_EER": 0.1, "threshold": 0.5}, tmp_path / "r.pth.tar")
    rebuilt, transform, info = engine_fas.load_fas_from_checkpoint(tmp_path / "r.pth.tar")
    assert (info["model"], info["norm_source"], info["mean"]) == ("fas_vit_small_patch16", "VGGFace2 fallback",
                                                                  [0.5482207536697388, 0.42340534925460815,
                                                                   0.3654651641845703])
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)[0][:, 0])


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["missing_list", "empty_domain", "missing_frame", "no_pt_model", "bad_pt_model",
                                  "wrong_size_pt_model", "finetuned_pt_model", "adapter_mode_on_plain_model",
                                  "latin1_list", "binary_list"])
def test_usage_errors_exit_2_with_one_line(case, workspace, tmp_path, capsys):
    _, data, pre = workspace
    tree = tmp_path / "data"
    shutil.copytree(data / "MCIO" / "txt", tree / "MCIO" / "txt")
    (tree / "MCIO" / "frame").symlink_to(data / "MCIO" / "frame")
    txt = tree / "MCIO" / "txt"
    argv = fas_argv(pre, tree, tmp_path / "out", "--runs", "1", "--iters", "2")
    expected = {"missing_list": f"{txt / 'casia_real_train.txt'}: list file not found",
                "empty_domain": f"{txt / 'replay_fake_train.txt'}: lists no frames (empty domain)",
                "missing_frame": f"{txt / 'msu_real_test.txt'}:2: frame",
                "no_pt_model": "give --pt_model",
                "bad_pt_model": f"--pt_model: checkpoint not found: {tmp_path / 'none.pth'}",
                "wrong_size_pt_model": "--pt_model: checkpoint",
                "finetuned_pt_model": f"--pt_model {tmp_path / 'ft.pth'} is a fine-tuned detector (a classifier head, "
                                      "task DfD, class names), not a pre-training checkpoint",
                "adapter_mode_on_plain_model": "--trainable_modules fs-adapter needs a *_fs_adapter --model",
                "latin1_list": f"{txt / 'oulu_fake_train.txt'}: not UTF-8 text (byte 0xE9",
                "binary_list": f"{txt / 'msu_real_test.txt'}: not UTF-8 text (byte 0x89"}[case]
    if case == "missing_list":
        (txt / "casia_real_train.txt").unlink()
    elif case == "empty_domain":
        (txt / "replay_fake_train.txt").write_text("\n")
    elif case == "missing_frame":
        lines = (txt / "msu_real_test.txt").read_text().splitlines()
        (txt / "msu_real_test.txt").write_text("\n".join([lines[0], "msu/test/real/gone_frame0.png", *lines[1:]]) + "\n")
    elif case == "latin1_list":
        (txt / "oulu_fake_train.txt").write_bytes(b"oulu/caf\xe9_frame0.png\n")
    elif case == "binary_list":
        (txt / "msu_real_test.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    elif case == "no_pt_model":
        argv = [a for a in argv if a not in ("--pt_model", str(pre))]
    elif case == "bad_pt_model":
        argv[argv.index(str(pre))] = str(tmp_path / "none.pth")
    elif case == "wrong_size_pt_model":
        other = create_model("fsfm_vit_small_patch16", **{**TINY_FSFM, "embed_dim": 64, "rep_decoder_embed_dim": 64})
        torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
        argv[argv.index(str(pre))] = str(tmp_path / "other.pth")
    elif case == "finetuned_pt_model":  # a DfD detector as our fine-tuning writes it
        classifier = create_model("vit_small_patch16", **TINY_VIT)
        torch.save({"model": classifier.state_dict(), "task": "DfD", "classes": ["fake", "real"]}, tmp_path / "ft.pth")
        argv[argv.index(str(pre))] = str(tmp_path / "ft.pth")
    else:
        argv += ["--trainable_modules", "fs-adapter"]
    with pytest.raises(SystemExit) as exit_info:
        main_finetune_FAS.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: " in err[-1] and expected in err[-1]
    assert not (tmp_path / "out" / "performance.csv").exists()


# ---------------------------------------------------------------------------------- predict
def test_predict_scores_aligned_chips_of_a_real_photo(trained):
    photo = faces_dir() / "Tom_Cruise_avp_2014_4.jpg"
    ckpt = trained / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    det = predict.Detector.from_checkpoint(ckpt, device="cpu")
    assert (det.crop_mode, det.info["task"]) == ("fas_aligned", "FAS")
    record = det.predict(str(photo))
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    crops = predict.fas_aligned_crops()(rgb)
    assert len(record["faces"]) == len(crops) == 1 and crops[0].image.shape == (224, 224, 3)
    model, transform, _ = engine_fas.load_fas_from_checkpoint(ckpt)
    with torch.no_grad():
        expected = model(transform(Image.fromarray(crops[0].image))[None]).softmax(-1)[0, 1].item()
    assert record["faces"][0]["score_live"] == pytest.approx(expected, abs=1e-6)
    assert record["faces"][0]["box"] == list(crops[0].box)
    assert predict.main(["--checkpoint", str(ckpt), str(photo), "--device", "cpu"]) == 0


# --------------------------------------------------------------------------------- test program
def _test_fas(ckpt: Path, data: Path, out: Path, *extra: str) -> tuple[dict, dict[str, list[float]]]:
    report = main_test_FAS.cli(["--resume", str(ckpt), "--config", "M", "--fas_data_root", str(data),
                                "--output_dir", str(out), "--device", "cpu", "--batch_size", "5", "--num_workers", "0", *extra])
    return report, read_report(out / "performance.csv")[1]


def test_main_test_fas_reproduces_the_training_runs_final_test(trained, workspace, tmp_path):
    _, data, _ = workspace
    header, training = read_report(trained / "performance.csv")
    for run in (0, 1):
        ckpt = trained / f"msu_vit_0_shot_checkpoint_run_{run}.pth.tar"
        report, tested = _test_fas(ckpt, data, tmp_path / str(run))
        assert read_report(tmp_path / str(run) / "performance.csv")[0] == header
        assert tested[str(run)] == training[str(run)]  # HTER, AUC, TPR@FPR=1%, HTER@source threshold as printed
        fas = report["results"]["msu"]["fas"]
        stored = load_checkpoint(ckpt)
        assert (fas["hter"], fas["threshold"]) == (stored["best_model_ACER"], stored["threshold"])
        assert report["model"] == "fas_vit_small_patch16" and report["metric_mode"] == "fas"
        assert fas["num_videos"] == 6  # msu test lists: 3 live + 3 spoof videos
        assert (tmp_path / str(run) / "scores_msu_frames.csv").is_file()
        text = (tmp_path / str(run) / "test_results.txt").read_text()
        assert f"HTER: {training[str(run)][0]:.2f}" in text


def test_main_test_fas_scores_a_released_structure_file(trained, workspace, tmp_path):
    """The original's ``.pth.tar`` (``state_dict``, numpy float64 metrics, no args or norm_stats) with the
    pre-training statistics file beside it: the same numbers as our checkpoint of the same weights."""
    _, data, pre = workspace
    ours = load_checkpoint(trained / "msu_vit_0_shot_checkpoint_run_0.pth.tar")
    released = tmp_path / "release" / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    released.parent.mkdir()
    torch.save({"epoch": ours["epoch"], "state_dict": ours["state_dict"], "valid_arg": ours["valid_arg"],
                "best_model_EER": np.float64(ours["best_model_EER"]), "best_model_ACER": ours["best_model_ACER"],
                "best_model_ACC": np.float64(ours["best_model_ACC"]), "threshold": np.float64(ours["threshold"])},
               released)
    shutil.copy(Path(pre).parent / "pretrain_ds_mean_std.txt", released.parent)
    _, training = read_report(trained / "performance.csv")
    report, tested = _test_fas(released, data, tmp_path / "t", "--model", "vit_small_patch16",
                                 "--model_kwargs", MODEL_KWARGS, "--input_size", "32")
    assert tested["0"] == training["0"]
    assert report["norm_stats"]["source"].endswith("pretrain_ds_mean_std.txt")


def test_main_test_fas_usage_errors_are_one_line(trained, workspace, tmp_path, capsys):
    _, data, _ = workspace
    ckpt = trained / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    with pytest.raises(SystemExit) as e:
        main_test_FAS.cli(["--resume", str(ckpt), "--fas_data_root", str(data), "--device", "cpu"])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as e:
        main_test_FAS.cli(["--resume", str(ckpt), "--config", "M", "--fas_data_root", str(tmp_path / "none"),
                           "--output_dir", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and str(tmp_path / "none") in err[-1]


# ------------------------------------------------------------------------------- values travel once
def _count_calls(monkeypatch, name: str, modules) -> list[tuple]:
    """Replace ``name`` in each module by one counting wrapper of the original; the list of call arguments."""
    calls, original = [], getattr(modules[0], name)

    def counted(*a, **kw):
        calls.append(a)
        return original(*a, **kw)
    for module in modules:
        monkeypatch.setattr(module, name, counted)
    return calls


def test_protocol_and_pt_model_are_resolved_once_per_fine_tuning(workspace, tmp_path, monkeypatch):
    """Two runs: ``--config`` becomes a protocol once, ``--pt_model`` is read once, and both runs start from the
    same encoder weights (the file's)."""
    from fsvfm.data import fas as fas_data
    _, data, pre = workspace
    protocols = _count_calls(monkeypatch, "get_protocol", [fas_data, engine_fas])
    loads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(Path(f).resolve()) or torch_load(f, *a, **kw))
    encoders, load_encoder = [], engine_fas.FASExperiment.load_encoder

    def recorded(self, model):
        load_encoder(self, model)
        encoders.append({k: v.detach().clone() for k, v in model.backbone.vit.state_dict().items()})
    monkeypatch.setattr(engine_fas.FASExperiment, "load_encoder", recorded)
    assert len(main_finetune_FAS.cli(fas_argv(pre, data, tmp_path, "--iters", "2"))["runs"]) == 2
    assert protocols == [("M",)]
    assert loads.count(Path(pre).resolve()) == 1
    pretrained = model_state_from(torch_load(pre, weights_only=False))
    shared = [k for k in encoders[0] if k in pretrained]
    assert len(encoders) == 2 and len(shared) == len(encoders[0]) - 2  # all but fc_norm.{weight,bias}
    assert all(torch.equal(encoders[0][k], encoders[1][k]) and torch.equal(encoders[0][k], pretrained[k])
               for k in shared)


def test_main_test_fas_resolves_protocol_and_checkpoint_once_and_writes_the_fas_lines(trained, workspace, tmp_path,
                                                                                      cache, monkeypatch):
    """An ``hf://`` checkpoint is fetched once per test command (the rebuild gets the local file), ``--config``
    becomes a protocol once, and ``test_results.txt`` holds the FAS lines of ``test_results.json``'s figures."""
    from fsvfm.data import fas as fas_data
    from fsvfm.util import checkpoint as checkpoint_io
    _, data, _ = workspace
    ckpt = trained / "msu_vit_0_shot_checkpoint_run_1.pth.tar"
    add_to_cache(cache, "mine/msu_vit_0_shot_checkpoint_run_1.pth.tar", ckpt.read_bytes())
    protocols = _count_calls(monkeypatch, "get_protocol", [fas_data, engine_fas])
    fetched = _count_calls(monkeypatch, "resolve_hub_uri", [checkpoint_io])
    report, tested = _test_fas("hf://Wolowolo/fsfm-3c/mine/msu_vit_0_shot_checkpoint_run_1.pth.tar", data, tmp_path)
    assert protocols == [("M",)]
    assert fetched == [("hf://Wolowolo/fsfm-3c/mine/msu_vit_0_shot_checkpoint_run_1.pth.tar",)]
    assert tested["1"] == read_report(trained / "performance.csv")[1]["1"]
    fas = report["results"]["msu"]["fas"]
    lines = [line.split("] ", 1)[1] for line in (tmp_path / "test_results.txt").read_text().splitlines()]
    block = lines[lines.index(next(x for x in lines if x.startswith("===== msu: "))):][:5]
    assert block[1].startswith("FRAME-LEVEL  ACC: ") and block[4].startswith("Testing time ")
    assert block[2:4] == [
        f"VIDEO-LEVEL  HTER: {100 * fas['hter']:.2f}  AUC: {100 * fas['auc']:.2f}  TPR@FPR=1%: "
        f"{100 * fas['tpr_at_fpr']:.2f}  EER threshold: {fas['threshold']:.4f}  (6 videos)",
        f"AT SOURCE THRESHOLD {fas['threshold_src']:.4f}  HTER: {100 * fas['hter_src']:.2f}"]


def test_a_classifier_rebuild_fetches_its_hf_path_once(cache, tmp_path, monkeypatch):
    from fsvfm.finetune_setup import load_classifier_from_checkpoint
    from fsvfm.util import checkpoint as checkpoint_io
    src = save_checkpoint(tmp_path / "ft.pth", tiny_classifier().state_dict(), norm_stats={"mean": [0.5] * 3, "std": [0.25] * 3},
                          args={"model": "vit_small_patch16", "input_size": 32, "model_kwargs": MODEL_KWARGS})
    add_to_cache(cache, "mine/ft.pth", src.read_bytes())
    fetched = _count_calls(monkeypatch, "resolve_hub_uri", [checkpoint_io])
    assert load_classifier_from_checkpoint("hf://Wolowolo/fsfm-3c/mine/ft.pth")[2]["norm_source"] == "checkpoint norm_stats"
    assert fetched == [("hf://Wolowolo/fsfm-3c/mine/ft.pth",)]


# ----------------------------------------------------------------------------------- resume, skips
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_keys(out: Path) -> list[tuple[int, int]]:
    return [(r["run"], r["iteration"]) for r in map(json.loads, (out / "log.txt").read_text().splitlines())]


def test_rerun_keeps_finished_runs_and_refuses_another_experiment(workspace, tmp_path, capsys):
    _, data, pre = workspace
    argv = fas_argv(pre, data, tmp_path, "--runs", "2", "--iters", "2")
    first = main_finetune_FAS.cli(argv)
    ckpts = {r: tmp_path / f"msu_vit_0_shot_checkpoint_run_{r}.pth.tar" for r in (0, 1)}
    kept = (ckpts[0].stat().st_mtime_ns, _digest(ckpts[0]))
    (tmp_path / "run_1_result.json").unlink()  # run 1 "interrupted" after its checkpoint
    (tmp_path / "performance.csv").unlink()  # the report write was lost
    stale = tmp_path / ".performance.csv.1a2b3c.tmp"  # what a killed atomic write leaves
    stale.write_text("half")
    second = main_finetune_FAS.cli(argv)
    assert (ckpts[0].stat().st_mtime_ns, _digest(ckpts[0])) == kept  # the finished run is not trained again
    assert second["runs"][0] == first["runs"][0] and second["runs"][1]["hter"] == first["runs"][1]["hter"]
    assert read_report(tmp_path / "performance.csv")[1]["0"] == [round(first["runs"][0][c], 4) for c in (
        "hter", "auc", "tpr", "hter_src")]  # the report is rebuilt from the finished runs
    assert _log_keys(tmp_path) == [(0, 1), (1, 1)]  # no duplicate records
    assert not stale.exists() and not list(tmp_path.glob("run_*_last.pth"))
    with pytest.raises(SystemExit) as exit_info:
        main_finetune_FAS.cli([*argv, "--lr", "1e-3"])
    assert exit_info.value.code == 2
    assert "another experiment's results (different --lr)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main_finetune_FAS.cli([*argv, "--lr", "1e-3", "--overwrite"])["runs"]
    assert json.loads((tmp_path / "fas_experiment.json").read_text())["lr"] == 1e-3


def test_interrupted_run_resumes_from_its_last_interval(workspace, tmp_path):
    _, data, pre = workspace
    argv = fas_argv(pre, data, tmp_path, "--runs", "1", "--iters", "4")
    main_finetune_FAS.cli(argv)
    best = load_checkpoint(tmp_path / "msu_vit_0_shot_checkpoint_run_0.pth.tar")
    # what a kill after the first of two intervals leaves: the last-interval file, no result
    (tmp_path / "run_0_result.json").unlink()
    model = create_fas_model("vit_small_patch16", **TINY_VIT)
    load_model_weights(model, model_state_from(best), strict=True)
    opt = engine_fas.fas_optimizer(model, argparse.Namespace(lr=1e-4, wd=1e-6))  # the run's optimizer
    save_checkpoint(tmp_path / "run_0_last.pth", model.state_dict(), optimizer=opt, epoch=0,
                    scaler=NativeScalerWithGradNormCount("cpu", enabled=False), run=0)
    result = main_finetune_FAS.cli(argv)
    assert _log_keys(tmp_path) == [(0, 1), (0, 3)]  # interval 1 logged once, again
    assert result["runs"][0]["iteration"] in (1, 3) and not (tmp_path / "run_0_last.pth").exists()
    assert "resumed from" in (tmp_path / "log_detail.txt").read_text()


def test_unreadable_and_oversized_frames_are_skipped_counted_and_named_once(workspace, tmp_path):
    _, data, pre = workspace
    tree = tmp_path / "data"
    shutil.copytree(data / "MCIO" / "txt", tree / "MCIO" / "txt")
    (tree / "MCIO" / "frame").symlink_to(data / "MCIO" / "frame")
    txt = tree / "MCIO" / "txt"
    bad_train = tmp_path / "bad_train.png"
    bad_train.write_bytes(b"not an image")
    # a list line may be an absolute path; 2 frames at --batch_size 2: every batch draws the bad one
    first = (txt / "casia_real_train.txt").read_text().splitlines()[0]
    (txt / "casia_real_train.txt").write_text(f"{first}\n{bad_train}\n")
    Image.new("RGB", (64, 64)).save(tmp_path / "bad_frame0.png")  # over the pixel guard lowered below
    (tmp_path / "bad_frame1.png").write_bytes(b"\x89PNG truncated")
    with open(txt / "msu_fake_test.txt", "a") as fh:
        fh.write(f"{tmp_path / 'bad_frame0.png'}\n")
    out = tmp_path / "out"
    try:
        images.set_max_pixels(2000)  # the 32x32 frames pass, the 64x64 one is oversized
        result = main_finetune_FAS.cli(fas_argv(pre, tree, out, "--runs", "1", "--iters", "4"))
        report = main_test_FAS.cli(["--resume", str(out / "msu_vit_0_shot_checkpoint_run_0.pth.tar"), "--config",
                                    "M", "--fas_data_root", str(tree), "--output_dir", str(tmp_path / "t"),
                                    "--device", "cpu", "--num_workers", "0"])
    finally:
        images.set_max_pixels(None)
    assert len(result["runs"]) == 1
    records = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    assert [(r["train_skipped_files"], r["test_skipped_files"]) for r in records] == [(1, 2), (1, 2)]
    log = (out / "log_detail.txt").read_text()
    assert log.count(f"skipping FAS frame: unreadable image {bad_train}") == 1  # drawn in every batch, named once
    assert log.count("bad_frame0.png") == 1 and "64x64 (0 megapixels), over the limit" in log
    msu = report["results"]["msu"]
    assert msu["skipped_files"] == 2 and msu["fas"]["num_videos"] == 6  # the bad video has no frame left
    assert sorted(Path(p).name for p in msu["unreadable_files"]) == ["bad_frame0.png", "bad_frame1.png"]


def test_list_files_decode_as_utf8_with_an_optional_bom(workspace, tmp_path):
    from fsvfm.data.fas import FASDataError, read_list_file
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfcasia/a_frame0.png\r\ncasia/b_frame0.png\n")
    assert read_list_file(tmp_path / "bom.txt") == ["casia/a_frame0.png", "casia/b_frame0.png"]
    (tmp_path / "latin1.txt").write_bytes(b"casia/caf\xe9_frame0.png\n")
    with pytest.raises(FASDataError, match=r"latin1.txt: not UTF-8 text \(byte 0xE9 at offset 9\)"):
        read_list_file(tmp_path / "latin1.txt")
    (tmp_path / "zeros.txt").write_bytes(b"casia/a.png\x00\x00\x01")
    with pytest.raises(FASDataError, match="zeros.txt: a binary file, not a list of frame paths"):
        read_list_file(tmp_path / "zeros.txt")


@pytest.mark.slow
def test_killed_experiment_continues_where_it_stopped(workspace, tmp_path):
    """SIGKILL in run 1 (after its first interval); the same command again keeps run 0 as it was, resumes run 1
    from its last interval and writes the report of both, each (run, iteration) logged once."""
    _, data, pre = workspace
    argv = fas_argv(pre, data, tmp_path, "--iters", "8")  # 2 runs x 4 intervals
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "fsvfm.main_finetune_FAS", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "run_1_last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (tmp_path / "run_0_result.json").is_file() and not (tmp_path / "performance.csv").exists()
    run0 = tmp_path / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    kept = (run0.stat().st_mtime_ns, _digest(run0))
    result = main_finetune_FAS.cli(argv)
    assert (run0.stat().st_mtime_ns, _digest(run0)) == kept
    assert [r["run"] for r in result["runs"]] == [0, 1]
    assert sorted(read_report(tmp_path / "performance.csv")[1]) == ["0", "1", "Mean", "Std dev"]
    assert _log_keys(tmp_path) == [(r, i) for r in (0, 1) for i in (1, 3, 5, 7)]
    assert "run 0: finished earlier" in (tmp_path / "log_detail.txt").read_text()
    assert "run 1: resumed from" in (tmp_path / "log_detail.txt").read_text()
