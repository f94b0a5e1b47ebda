"""FS-Adapter through the DfD/DiFF programs (spec 7.2-7.3): flags, trainable parameters, logged losses, testing."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsvfm import main_finetune_DfD
from fsvfm.finetune_setup import load_classifier_from_checkpoint, load_pretrained_encoder
from fsvfm.losses import RealAnchorConLoss
from fsvfm.main_test_DfD import DFD_TASK
from fsvfm.main_test_DiFF import DIFF_TASK
from fsvfm.registry import create_model
from fsvfm.tasks import classifier as adapter_hooks
from fsvfm.util.checkpoint import load_checkpoint, save_checkpoint
from fsvfm.util.norm_stats import STATS_FILENAME, write_mean_std
from tests.helpers import (
    PRETRAIN_STATS,
    TINY_VIT,
    eval_argv,
    finetune_argv,
    make_split_tree,
    pretrain_with_main,
    run_tests_of,
)

ADAPTER = "vit_small_patch16_fs_adapter"
TRAINABLE = ("adapter.", "projector.", "head.")


def adapter_argv(pretrained: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The spec 7.6 recipe (layer decay 0, weight decay 0, fs-adapter mode) on the tiny configuration."""
    return finetune_argv(pretrained, data, out, "--model", ADAPTER, "--trainable_modules", "fs-adapter",
                         "--layer_decay", "0", "--weight_decay", "0", "--weight_cl", "0.1", *extra)


@pytest.fixture(scope="module")
def two_epochs(workspace):
    """A 2-epoch fs-adapter run saving after each epoch."""
    root, ckpt, data = workspace
    out = root / "run"
    result = main_finetune_DfD.cli(adapter_argv(ckpt, data, out, "--lr", "5e-2", "--warmup_epochs", "0",
                                                "--save_freq", "1"))
    return out, result


def test_adapter_flags_defaults():
    args = main_finetune_DfD.get_args_parser().parse_args([])
    assert (args.adapter_reduction, args.temperature, args.weight_cl, args.trainable_modules, args.train_fc_norm) == (
        4, 0.07, 0.1, "all", False)
    with pytest.raises(SystemExit):
        main_finetune_DfD.get_args_parser().parse_args(["--trainable_modules", "adapter"])


def test_pretrained_encoder_into_adapter_keeps_uniform_head_bias(workspace):
    _, ckpt, _ = workspace
    torch.manual_seed(0)
    model = create_model(ADAPTER, num_classes=2, **TINY_VIT)
    bias = model.head.bias.detach().clone()
    info = load_pretrained_encoder(model, ckpt)
    assert info["missing"] == ["adapter.linear1.weight", "adapter.linear2.weight", "fc_norm.bias", "fc_norm.weight",
                               "head.bias", "head.weight", "projector.bias", "projector.weight"]
    assert torch.equal(model.head.bias, bias) and bias.abs().min() > 0  # spec 7.1: not zeroed
    assert model.head.weight.shape == (2, 96) and 0 < model.head.weight.std() < 1e-4
    zeroed = create_model(ADAPTER, num_classes=2, **TINY_VIT)
    load_pretrained_encoder(zeroed, ckpt, zero_head_bias=True)
    assert torch.all(zeroed.head.bias == 0)


def test_fs_adapter_epoch_changes_only_adapter_projector_head(workspace, two_epochs):
    root, ckpt, _ = workspace
    out, _ = two_epochs
    first, second = (load_checkpoint(out / f"checkpoint-{e}.pth") for e in (0, 1))
    pretrained = load_checkpoint(ckpt)["model"]
    for name, value in second["model"].items():
        if name.startswith(TRAINABLE):
            assert not torch.equal(value, first["model"][name]), name
        else:  # frozen: bit-equal across the epoch, and to the pre-trained encoder
            assert torch.equal(value, first["model"][name]), name
            expected = pretrained.get(name)
            if name.startswith("fc_norm."):  # A5 kept: frozen at its identity init
                expected = torch.ones(48) if name.endswith("weight") else torch.zeros(48)
            assert torch.equal(value, expected), name
    # the optimizer holds exactly the 6 trainable tensors: D = 48, D/r = 12 -> 1,502 elements
    groups = second["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == len(second["optimizer"]["state"]) == 6
    assert {g["lr_scale"] for g in groups} == {1.0} and {g["weight_decay"] for g in groups} == {0.0}
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert records[0]["n_parameters"] == 2 * 48 * 12 + (12 * 12 + 12) + (2 * 96 + 2) == 1502
    assert second["model_name"] == ADAPTER and second["args"]["trainable_modules"] == "fs-adapter"


def test_cls_and_con_loss_logged(two_epochs):
    out, result = two_epochs
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert r["train_skipped_batches"] == 0
        # epoch means of all-reduced values: the total is the weighted sum of the logged components
        assert r["train_loss"] == pytest.approx(r["train_cls_loss"] + 0.1 * r["train_con_loss"], rel=1e-5)
    assert "cls_loss:" in (out / "log_detail.txt").read_text()
    tags = EventAccumulator(str(out)).Reload().Tags()["scalars"]
    assert {"loss", "cls_loss", "con_loss", "lr", "perf/val_loss"} <= set(tags)
    assert result["last_val"]["loss"] < 0.3 < math.log(2)  # it learned (brightness-separable classes)


def test_train_fc_norm_option(workspace, tmp_path):
    _, ckpt, data = workspace
    main_finetune_DfD.cli(adapter_argv(ckpt, data, tmp_path, "--epochs", "1", "--train_fc_norm", "--lr", "1e-2"))
    saved = load_checkpoint(tmp_path / "checkpoint-0.pth")
    assert sum(len(g["params"]) for g in saved["optimizer"]["param_groups"]) == 8
    assert not torch.equal(saved["model"]["fc_norm.weight"], torch.ones(48))


@pytest.mark.parametrize("extra, match", [
    (("--model", "vit_small_patch16", "--trainable_modules", "fs-adapter"), "use --model vit_small_patch16_fs_adapter"),
    (("--model", ADAPTER, "--train_fc_norm"), "--train_fc_norm only applies"),
])
def test_adapter_flag_mistakes_stop_before_training(workspace, tmp_path, extra, match, capsys):
    _, ckpt, data = workspace
    with pytest.raises(SystemExit) as stop:
        main_finetune_DfD.cli(finetune_argv(ckpt, data, tmp_path, *extra))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and ": error: " in last and match in last
    with pytest.raises(ValueError, match=match):  # the library entry raises it
        main_finetune_DfD.main(main_finetune_DfD.get_args_parser().parse_args(finetune_argv(ckpt, data, tmp_path, *extra)))
    assert not list(tmp_path.glob("checkpoint-*"))


def test_plain_model_ignores_the_contrastive_flags(workspace, tmp_path):
    _, ckpt, data = workspace
    main_finetune_DfD.cli(finetune_argv(ckpt, data, tmp_path, "--epochs", "1", "--weight_cl", "0.5"))
    record = json.loads((tmp_path / "log.txt").read_text())
    assert "train_con_loss" not in record and "train_cls_loss" not in record


def test_loss_hook_uses_hard_labels_and_vocabulary_anchor():
    torch.manual_seed(0)
    model = create_model(ADAPTER, num_classes=2, **TINY_VIT).eval()
    args = main_finetune_DfD.get_args_parser().parse_args(["--model", ADAPTER, "--weight_cl", "0.3"])
    loss_fn = DFD_TASK.make_loss(torch.nn.CrossEntropyLoss(), args)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 1, 0, 1])
    soft = torch.tensor([[0.3, 0.7], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])  # mixed targets
    loss, parts = loss_fn(model, x, soft, args, labels=labels)
    logits, projected = model(x, training=True)
    con = RealAnchorConLoss(0.07, pos_class_index=1)(projected[:, None], labels)
    assert torch.allclose(parts["cls_loss"], torch.nn.functional.cross_entropy(logits, soft))
    assert torch.allclose(parts["con_loss"], con) and torch.allclose(loss, parts["cls_loss"] + 0.3 * con)
    assert DIFF_TASK.make_loss is DFD_TASK.make_loss


def test_adapter_finetune_then_test_from_main_pretrain(tmp_path):
    """Done-when of the issue: main_pretrain -> fs-adapter fine-tuning -> main_test_DiFF-style test, on CPU."""
    ckpt = pretrain_with_main(tmp_path)
    data = make_split_tree(tmp_path / "data", "train", videos=2, frames=3)
    make_split_tree(data, "val", videos=2, frames=2)
    out = tmp_path / "ft"
    main_finetune_DfD.cli(adapter_argv(ckpt, data, out, "--epochs", "1", "--adapter_reduction", "8"))
    saved = load_checkpoint(out / "checkpoint-0.pth")
    assert saved["model"]["adapter.linear1.weight"].shape == (6, 48) and saved["args"]["adapter_reduction"] == 8
    test_root = tmp_path / "tests_root"
    folder = next(t.folder for t in DIFF_TASK.test_sets if t.name == "DiFF_T2I")
    make_split_tree(test_root / folder, "test", videos=2, frames=2, classes=("fake", "real"))
    report = run_tests_of(DIFF_TASK, eval_argv(out / "checkpoint-0.pth", tmp_path / "test",
                                                 "--test_root", str(test_root), "--model", ADAPTER))
    assert report["model"] == ADAPTER and report["results"]["DiFF_T2I"]["num_images"] == 8
    # the rebuilt model (reduction 8 from the checkpoint) scores with logits only, as the test program did
    model, transform, _ = load_classifier_from_checkpoint(out / "checkpoint-0.pth")
    assert model.adapter.linear1.weight.shape == (6, 48)
    rows = (tmp_path / "test" / "scores_DiFF_T2I_frames.csv").read_text().splitlines()[1:]
    for row in rows:
        path, *_, score, _ = row.split(",")
        with Image.open(path) as im, torch.no_grad():
            assert float(score) == pytest.approx(float(model(transform(im.convert("RGB"))[None]).softmax(-1)[0, 1]),
                                                 abs=1e-6)


def test_released_adapter_checkpoint_with_plain_model_name(tmp_path):
    """The original's adapter programs record ``vit_*_patch16``; the weights say it is an adapter."""
    model = create_model(ADAPTER, num_classes=2, adapter_reduction=2, **TINY_VIT)
    args = {"model": "vit_small_patch16", "adapter_reduction": 2, "input_size": 32, "nb_classes": 2,
            "model_kwargs": {k: v for k, v in TINY_VIT.items() if k != "img_size"}}
    save_checkpoint(tmp_path / "ckpt.pth", model.state_dict(), args=args)
    write_mean_std(tmp_path / STATS_FILENAME, *PRETRAIN_STATS)
    rebuilt, _, info = load_classifier_from_checkpoint(tmp_path / "ckpt.pth")
    assert info["model"] == ADAPTER and rebuilt.projector.weight.shape == (24, 24)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_configure_classifier_prints_share_for_full_sizes(caplog):
    """The start-up line for the released sizes (meta device: no memory)."""
    expected = {"vit_small_patch16": (84_578, 21_750_242), "vit_base_patch16": (335_042, 86_133_698),
                "vit_large_patch16": (594_178, 303_895_810), "vit_huge_patch14": (927_042, 631_691_842)}
    args = main_finetune_DfD.get_args_parser().parse_args(["--trainable_modules", "fs-adapter"])
    with caplog.at_level("INFO"):
        for name, (trainable, total) in expected.items():
            with torch.device("meta"):
                model = create_model(f"{name}_fs_adapter", num_classes=2)
            args.model = f"{name}_fs_adapter"
            count = adapter_hooks.configure_classifier(model, args)
            assert (count.trainable, count.total) == (trainable, total)
    assert "84,578 of 21,750,242 parameters trainable (0.39%)" in caplog.text
    assert "927,042 of 631,691,842 parameters trainable (0.15%)" in caplog.text
