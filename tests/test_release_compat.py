"""Files built exactly as the original programs write them: FAS ``.pth.tar`` with numpy float64 metrics (numpy 1.x
and 2.x spellings), DfD checkpoints with ``argparse.Namespace`` args, fine-tuning checkpoints whose optimizer groups
come in the original's order; malicious pickles in the same positions are still refused."""
from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import pickletools
import shutil

import numpy as np
import pytest
import torch

from fsvfm import main_finetune_DfD, predict
from fsvfm.data import fas as fas_data
from fsvfm.finetune_setup import build_optimizer
from fsvfm.models_fas import create_fas_model
from fsvfm.registry import create_model
from fsvfm.tasks import fas as engine_fas
from fsvfm.util.checkpoint import (
    CheckpointError,
    checkpoint_payload,
    load_checkpoint,
    load_optimizer_state,
    restore_training_state,
)
from fsvfm.util.cli import run_cli
from fsvfm.util.norm_stats import STATS_FILENAME, VGGFACE2_MEAN, VGGFACE2_STD, write_mean_std
from tests.helpers import TINY_FSFM, TINY_VIT, detector_checkpoint, faces_dir

PHOTO = "Tom_Cruise_avp_2014_4.jpg"
_SCALAR = np._core.multiarray.scalar


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy scalars as numpy 1.x does: ``numpy.core.multiarray.scalar``."""

    def reducer_override(self, obj):
        return "scalar" if obj is _SCALAR else NotImplemented

    def save_global(self, obj, name=None):
        if obj is not _SCALAR:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
        self.memoize(obj)


class _Numpy1Pickle:
    Pickler = _Numpy1Pickler


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def save_original(obj, path, numpy1: bool) -> None:
    torch.save(obj, path, **({"pickle_module": _Numpy1Pickle} if numpy1 else {}))


def pickle_globals(path) -> set[str]:
    """The GLOBAL names of a zip-format torch file's ``data.pkl``."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}


@pytest.fixture(scope="module")
def fas_model():
    torch.manual_seed(0)
    return create_fas_model("vit_small_patch16").eval()


def original_fas_dict(model, evil=None) -> dict:
    """``{'epoch','state_dict','valid_arg',...}`` as the original FAS program saves it."""
    valid_arg = [0.31, 95.0, torch.tensor([0.125]), np.float64(0.0625), 0.9, np.float64(0.51), 93.5, 0.4]
    if evil is not None:
        valid_arg.append(evil)
    return {"epoch": 3, "state_dict": model.state_dict(), "valid_arg": valid_arg, "best_model_EER": np.float64(0.0625),
            "best_model_ACER": 0.07, "best_model_ACC": np.float64(93.5), "threshold": 0.51}


@pytest.mark.parametrize("numpy1", [True, False], ids=["numpy1", "numpy2"])
def test_released_fas_file_with_numpy_scalars_is_scored(numpy1, fas_model, tmp_path, capsys):
    path = tmp_path / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    save_original(original_fas_dict(fas_model), path, numpy1)
    spelling = "numpy.core.multiarray.scalar" if numpy1 else "numpy._core.multiarray.scalar"
    assert spelling in pickle_globals(path) and "numpy.dtype" in pickle_globals(path)
    ckpt = load_checkpoint(path)
    assert type(ckpt["best_model_EER"]) is np.float64 and ckpt["best_model_EER"] == 0.0625
    assert ckpt["valid_arg"][5] == np.float64(0.51) and ckpt["best_model_ACC"] == 93.5
    rebuilt, _, info = engine_fas.load_fas_from_checkpoint(path)
    assert info["model"] == "fas_vit_small_patch16"
    photo = faces_dir() / PHOTO
    record = predict.Detector.from_checkpoint(path, device="cpu").predict(str(photo))
    assert len(record["faces"]) == 1 and 0.0 <= record["faces"][0]["score_live"] <= 1.0
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(path), str(photo), "--device", "cpu"]) == 0
    assert PHOTO in capsys.readouterr().out


@pytest.mark.parametrize("numpy1", [True, False], ids=["numpy1", "numpy2"])
def test_malicious_pickle_in_a_fas_file_is_refused(numpy1, fas_model, tmp_path, capsys):
    path = tmp_path / "evil.pth.tar"
    save_original(original_fas_dict(fas_model, evil=_Evil()), path, numpy1)
    assert "posix.system" in pickle_globals(path)
    with pytest.raises(CheckpointError, match="could run code on load"):
        load_checkpoint(path)
    assert predict.main(["--checkpoint", str(path), str(faces_dir() / PHOTO), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "could run code on load" in err[0]


def test_only_the_numpy_float64_reconstructors_are_allowed(tmp_path):
    """Other numpy objects (an array, a float32 scalar) are not in the allowlist."""
    for value in (np.zeros(2), np.float32(1.0)):
        torch.save({"x": value}, tmp_path / "n.pth")
        with pytest.raises(CheckpointError, match="could run code on load"):
            load_checkpoint(tmp_path / "n.pth")


# ------------------------------------------------------------------------------ DfD / fine-tuning files
@pytest.fixture(scope="module")
def dfd(tmp_path_factory):
    return detector_checkpoint(tmp_path_factory.mktemp("compat"))


def original_dfd_dict(ours: dict, reverse_groups: bool = False) -> dict:
    """``{'model','optimizer','epoch','scaler','args'}`` as the original's fine-tuning saves it: Namespace args, a
    GradScaler state, and (``reverse_groups``) its optimizer groups in another order, parameters renumbered."""
    optim = ours["optimizer"]
    if reverse_groups:
        groups, state, index = [], {}, 0
        for g in reversed(optim["param_groups"]):
            new = list(range(index, index + len(g["params"])))
            state.update({n: optim["state"][o] for o, n in zip(g["params"], new) if o in optim["state"]})
            groups.append({**g, "params": new})
            index += len(g["params"])
        optim = {"state": state, "param_groups": groups}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    return {"model": ours["model"], "optimizer": optim, "epoch": 0, "scaler": scaler,
            "args": argparse.Namespace(**ours["args"])}


def test_dfd_checkpoint_with_namespace_args_is_scored(dfd, tmp_path, capsys):
    path = tmp_path / "checkpoint-min_val_loss.pth"
    torch.save(original_dfd_dict(load_checkpoint(dfd)), path)
    photo = str(faces_dir() / PHOTO)
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(path), photo, "--device", "cpu"]) == 0
    assert PHOTO in capsys.readouterr().out
    evil = original_dfd_dict(load_checkpoint(dfd))
    evil["args"].note = _Evil()
    torch.save(evil, tmp_path / "evil.pth")
    assert predict.main(["--checkpoint", str(tmp_path / "evil.pth"), photo, "--device", "cpu"]) == 2
    assert "could run code on load" in capsys.readouterr().err


def _finetune_args(ckpt: dict) -> argparse.Namespace:
    return argparse.Namespace(**{**ckpt["args"], "start_epoch": 0})


def test_resume_maps_optimizer_groups_given_in_another_order(dfd, tmp_path):
    ours = load_checkpoint(dfd)
    path = tmp_path / "checkpoint-0.pth"
    torch.save(original_dfd_dict(ours, reverse_groups=True), path)
    model, _, _ = predict.rebuild_classifier(dfd)
    args = _finetune_args(ours)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    restore_training_state(path, model, optimizer, scaler, args)
    got = optimizer.state_dict()
    assert got["param_groups"][0]["lr_scale"] == ours["optimizer"]["param_groups"][0]["lr_scale"]
    assert len(got["state"]) == len(ours["optimizer"]["state"]) > 0
    for key, value in ours["optimizer"]["state"].items():  # every parameter gets back its own moments
        assert torch.equal(got["state"][key]["exp_avg"], value["exp_avg"])
    assert args.start_epoch == 1

    out = tmp_path / "resumed"
    main_finetune_DfD.cli(["--resume", str(path), *_resume_argv(ours, out)])
    assert (out / "checkpoint-1.pth").is_file()


def _resume_argv(ours: dict, out) -> list[str]:
    a = ours["args"]
    data = [x for path in a["data_path"] for x in ("--finetune_data_path", path)]
    return [*data, "--output_dir", str(out), "--model", a["model"],
            "--input_size", str(a["input_size"]), "--model_kwargs", a["model_kwargs"], "--batch_size", "4",
            "--epochs", "2", "--warmup_epochs", "1", "--num_workers", "0", "--device", "cpu",
            "--layer_decay", str(a["layer_decay"]), "--print_freq", "50"]


def test_an_unmappable_optimizer_state_is_one_line_exit_2(dfd, tmp_path, capsys):
    ours = load_checkpoint(dfd)
    bad = original_dfd_dict(ours, reverse_groups=True)
    for g in bad["optimizer"]["param_groups"]:
        g["lr_scale"] = 0.123  # no group of this model has this scale
    model, _, _ = predict.rebuild_classifier(dfd)
    optimizer = build_optimizer(model, _finetune_args(ours))
    with pytest.raises(CheckpointError, match=r"x\.pth: its optimizer state does not fit"):
        load_optimizer_state(optimizer, bad["optimizer"], tmp_path / "x.pth")
    path = tmp_path / "checkpoint-0.pth"
    torch.save(bad, path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_finetune_DfD.main, main_finetune_DfD.get_args_parser(),
                ["--resume", str(path), *_resume_argv(ours, tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(path) in err[-1] and "does not fit this model's parameter groups" in err[-1]


def test_our_files_leave_out_a_missing_optimizer_and_a_disabled_scaler():
    payload = checkpoint_payload({"w": torch.zeros(1)}, scaler=torch.amp.GradScaler("cpu", enabled=False), epoch=0)
    assert "optimizer" not in payload and "scaler" not in payload
    enabled = torch.amp.GradScaler("cpu", enabled=True)
    assert checkpoint_payload({"w": torch.zeros(1)}, scaler=enabled)["scaler"]["scale"] == 65536.0


def test_fas_backbone_loader_strips_the_mcf_target_encoder_prefix(tmp_path):
    torch.manual_seed(0)
    encoder = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    torch.save({"model": {f"target_encoder.{k}": v for k, v in encoder.state_dict().items()}}, tmp_path / "mcf.pth")
    model = create_fas_model("vit_small_patch16", **TINY_VIT)
    engine_fas.load_fas_encoder(model, tmp_path / "mcf.pth")
    assert torch.equal(model.backbone.vit.blocks[1].mlp.fc2.weight, encoder.blocks[1].mlp.fc2.weight)


# ------------------------------------------------------------------------------ FAS normalisation
FAS_RELEASE = "finetuned_models/FS-VFM_extensions/cross_domain_FAS/ViT-S_VF2_600e/MCIO_protocol"
PRE_STATS = f"pretrained_models/FS-VFM_ViT-S_VF2_600e/{STATS_FILENAME}"


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty hub cache, the working folder in tmp (its checkpoint/ is looked at) and no fetching."""
    from huggingface_hub import constants

    from fsvfm import hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.chdir(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("fetched from the hub")
    from fsvfm.util import hub_io
    monkeypatch.setattr(hub, "hub_file", refuse)
    monkeypatch.setattr(hub_io, "hub_file", refuse)  # what resolve_hub_uri calls
    return tmp_path / "hub_cache"


def test_released_fas_file_is_normalised_as_its_training_was(fas_model, tmp_path, no_hub, caplog):
    """A released FAS file (no statistics file beside it) takes the statistics of the pre-trained release it was
    fine-tuned from: in the download folder, else in the hub cache, else the VGGFace2 values (not ImageNet)."""
    from tests.helpers import add_to_cache
    download = tmp_path / "dl"
    path = download / FAS_RELEASE / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
    path.parent.mkdir(parents=True)
    save_original(original_fas_dict(fas_model), path, numpy1=True)
    stats = download / PRE_STATS
    stats.parent.mkdir(parents=True)
    write_mean_std(stats, [0.55, 0.42, 0.37], [0.28, 0.24, 0.23])
    with caplog.at_level(logging.INFO, logger="fsvfm.data.fas"):
        det = predict.Detector.from_checkpoint(path, device="cpu", detect=False)
    assert det.info["norm_stats"] == {"mean": [0.55, 0.42, 0.37], "std": [0.28, 0.24, 0.23], "source": str(stats)}
    assert (f"normalisation from {stats} (the pre-trained release FS-VFM_ViT-S_VF2_600e the FAS release was "
            "fine-tuned from)") in caplog.text

    stats.unlink()
    add_to_cache(no_hub, PRE_STATS, b'{"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}\n')
    mean, std, source = fas_data.fas_mean_std(path, finetuned=True)
    assert (mean, std) == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.2]) and "hub_cache" in source and source.endswith(PRE_STATS)

    shutil.rmtree(no_hub)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        mean, std, source = fas_data.fas_mean_std(path, finetuned=True)
    assert (mean, std, source) == (list(VGGFACE2_MEAN), list(VGGFACE2_STD), "VGGFace2 fallback")
    assert "normalisation from VGGFace2 fallback" in caplog.text and str(stats) in caplog.text  # names what was tried
    beside = path.with_name(STATS_FILENAME)  # a file beside the checkpoint still comes first
    write_mean_std(beside, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert fas_data.fas_mean_std(path, finetuned=True) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], str(beside))
    assert fas_data.fas_mean_std(path, imagenet=True, finetuned=True)[2] == "ImageNet (--normalize_from_IMN)"


def test_a_fas_file_outside_a_release_gets_the_vggface2_values(fas_model, tmp_path, no_hub):
    path = tmp_path / "mine.pth.tar"
    save_original(original_fas_dict(fas_model), path, numpy1=False)
    det = predict.Detector.from_checkpoint(path, device="cpu", detect=False)
    assert det.info["norm_stats"] == {"mean": list(VGGFACE2_MEAN), "std": list(VGGFACE2_STD),
                                      "source": "VGGFace2 fallback"}
    # training from a --pt_model without a statistics file keeps the original's ImageNet fallback
    assert fas_data.fas_mean_std(path)[2] == "ImageNet fallback"


# ------------------------------------------------------------------------------ issue 17's "done when"
def _predict_cli(checkpoint, photo, json_out) -> tuple[int, str]:
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "fsvfm.predict", "--checkpoint", str(checkpoint), str(photo),
                           "--device", "cpu", "--output", str(json_out)],
                          capture_output=True, text=True, env=env, cwd=json_out.parent, timeout=600)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_original_structures_are_scored_by_the_predict_program(fas_model, dfd, tmp_path):
    """``python -m fsvfm.predict`` on a real photo: the original FAS ``.pth.tar`` (np.float64 in the numpy 1.x and
    2.x spellings), a DfD checkpoint with Namespace args and a 4-class file shaped as the unified detector; exit 0,
    one face, and the classes named (live/spoof, real/fake, the unified detector's four)."""
    import json

    from tests.helpers import UNIFIED_CLASSES, released_unified_checkpoint
    photo = faces_dir() / PHOTO
    files = {}
    for numpy1 in (True, False):
        files[f"FAS numpy{2 - numpy1}"] = path = tmp_path / f"np{2 - numpy1}" / "msu_vit_0_shot_checkpoint_run_0.pth.tar"
        path.parent.mkdir()
        save_original(original_fas_dict(fas_model), path, numpy1)
    files["DfD Namespace args"] = tmp_path / "dfd" / "checkpoint-min_val_loss.pth"
    files["DfD Namespace args"].parent.mkdir()
    torch.save(original_dfd_dict(load_checkpoint(dfd)), files["DfD Namespace args"])
    files["Unified 4 classes"] = released_unified_checkpoint(tmp_path / "hub" / "checkpoint")
    expected = {"FAS": ["spoof", "live"], "DfD": ["fake", "real"], "Unified": list(UNIFIED_CLASSES)}
    for name, path in files.items():
        out = tmp_path / f"{name.replace(' ', '_')}.json"
        rc, printed = _predict_cli(path, photo, out)
        print(f"\n=== {name}: python -m fsvfm.predict --checkpoint {path.name} {PHOTO} (rc {rc})\n{printed}")
        assert rc == 0, printed
        assert "; normalisation from VGGFace2 fallback" in printed.splitlines()[0]  # no statistics in these folders
        (record,) = json.loads(out.read_text())
        face = record["faces"][0]
        assert len(record["faces"]) == 1 and record["error"] is None
        assert sorted(face["scores"]) == sorted(expected[name.split()[0]]) == sorted(record["scores"])
        assert face["label"] == max(face["scores"], key=face["scores"].get)
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-6)
