"""Checkpoint I/O: round trip, released (legacy) format, unsafe pickles, mismatches, atomicity."""
from __future__ import annotations

import argparse
import os
import pathlib

import pytest
import torch

from fsvfm.registry import create_model
from fsvfm.util import checkpoint as ckpt
from tests.helpers import TINY_FSFM


def _tiny():
    return create_model("fsfm_vit_small_patch16", **TINY_FSFM)


def test_round_trip_restores_weights_optimizer_and_plain_args(tmp_path):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.cls_token.grad = torch.ones_like(model.cls_token)
    opt.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = argparse.Namespace(model="fsfm_vit_small_patch16", blr=1.5e-4, data_path=["a", "b"], device="cpu")
    path = ckpt.save_checkpoint(tmp_path / "checkpoint-3.pth", model.state_dict(), optimizer=opt, epoch=3,
                                scaler=scaler, args=args)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pth"]  # no temp file left behind
    loaded = ckpt.load_checkpoint(path)
    assert set(loaded) == {"model", "optimizer", "epoch", "args", "model_name"}  # a disabled scaler is left out
    assert loaded["epoch"] == 3 and loaded["model_name"] == "fsfm_vit_small_patch16"
    assert loaded["args"] == {"model": "fsfm_vit_small_patch16", "blr": 1.5e-4, "data_path": ["a", "b"],
                              "device": "cpu"}
    fresh = _tiny()
    ckpt.load_model_weights(fresh, ckpt.model_state_from(loaded), strict=True, source=path)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"],
                       opt.state[opt.param_groups[0]["params"][0]]["exp_avg"])


def test_released_format_with_namespace_and_ddp_prefix_loads(tmp_path):
    model = _tiny()
    legacy = {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "epoch": 599,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "args": argparse.Namespace(model="fsfm_vit_base_patch16", epochs=600, norm_pix_loss=True),
    }
    path = tmp_path / "checkpoint-599.pth"
    torch.save(legacy, path)
    loaded = ckpt.load_checkpoint(path)
    assert isinstance(loaded["args"], argparse.Namespace)
    assert ckpt.args_dict(loaded) == {"model": "fsfm_vit_base_patch16", "epochs": 600, "norm_pix_loss": True}
    state = ckpt.model_state_from(loaded)
    assert set(state) == set(model.state_dict())
    ckpt.load_model_weights(_tiny(), state, strict=True, source=path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": _Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match=r"refusing to load .*evil\.pth"):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "pwned_marker").exists()


def test_missing_corrupt_and_non_dict_files(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ckpt.CheckpointError, match="bad.pth"):
        ckpt.load_checkpoint(bad)
    tensor_only = tmp_path / "t.pth"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(ckpt.CheckpointError, match="expected a dict"):
        ckpt.load_checkpoint(tensor_only)


def test_mismatched_checkpoint_names_file_keys_and_shapes():
    model = _tiny()
    state = dict(model.state_dict())
    state["cls_token"] = torch.zeros(1, 1, 7)
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model_weights(model, state, strict=True, source="ckpt_x.pth")
    msg = str(err.value)
    assert "ckpt_x.pth" in msg and "cls_token: file (1, 1, 7) vs model (1, 1, 48)" in msg
    assert "1 missing key(s): norm.weight" in msg and "1 unexpected key(s): extra.weight" in msg


def test_strip_prefixes_handles_nested_wrappers():
    t = torch.zeros(1)
    assert list(ckpt.strip_prefixes({"module._orig_mod.module.a.b": t, "c": t})) == ["a.b", "c"]


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-1.pth"
    ckpt.save_checkpoint(path, {"w": torch.ones(2)}, epoch=1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(2)}, epoch=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1.pth"]
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_find_latest_checkpoint(tmp_path):
    for name in ["checkpoint-9.pth", "checkpoint-19.pth", "checkpoint-min_pretrain_loss.pth",
                 "checkpoint-te-39.pth"]:
        (tmp_path / name).write_bytes(b"")
    assert ckpt.find_latest_checkpoint(tmp_path).name == "checkpoint-19.pth"
    assert ckpt.find_latest_checkpoint(tmp_path, "checkpoint-te-").name == "checkpoint-te-39.pth"
    assert ckpt.find_latest_checkpoint(tmp_path / "empty") is None


class _WindowsPathArg:
    """Pickles as ``pathlib.WindowsPath`` (what a run on Windows stored), which Linux cannot build."""

    def __reduce__(self):
        return (pathlib.WindowsPath, ("C:\\data", "faces"))


def test_legacy_args_holding_pathlib_paths_load(tmp_path):
    args = argparse.Namespace(output_dir=pathlib.Path("/runs/x"), data_path=[pathlib.PurePosixPath("data/a")],
                              log_dir=_WindowsPathArg(), epochs=600)
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 5, "args": args}, tmp_path / "legacy.pth")
    loaded = ckpt.load_checkpoint(tmp_path / "legacy.pth")
    got = ckpt.args_dict(loaded)
    assert got == {"output_dir": pathlib.PurePosixPath("/runs/x"), "data_path": [pathlib.PurePosixPath("data/a")],
                   "log_dir": pathlib.PureWindowsPath("C:/data/faces"), "epochs": 600}
    assert type(got["output_dir"]) is pathlib.PurePosixPath      # pure: no file-system access, any OS
    ckpt.save_checkpoint(tmp_path / "resaved.pth", loaded["model"], args=loaded["args"])
    assert ckpt.load_checkpoint(tmp_path / "resaved.pth")["args"]["log_dir"] == "C:\\data\\faces"


def test_saved_checkpoint_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = ckpt.save_checkpoint(tmp_path / "checkpoint-0.pth", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_state_dict_key_of_the_fas_files(tmp_path):
    state = {"w": torch.arange(3.0)}
    path = ckpt.save_checkpoint(tmp_path / "r.pth.tar", state, model_key="state_dict", threshold=0.5)
    loaded = ckpt.load_checkpoint(path)
    assert "model" not in loaded and loaded["threshold"] == 0.5
    assert torch.equal(ckpt.model_state_from(loaded)["w"], state["w"])
    with pytest.raises(ValueError, match="model_key must be one of"):
        ckpt.save_checkpoint(tmp_path / "x.pth", state, model_key="weights")
