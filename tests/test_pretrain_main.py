"""End-to-end pre-training on generated faces with a tiny network: outputs, resume, DDP under torchrun."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.optim import param_groups_weight_decay

from fsvfm.main_pretrain import get_args_parser, main
from fsvfm.pretrain_runner import _Run, build_networks, find_resume_set, resume
from fsvfm.util.amp import NativeScalerWithGradNormCount
from tests.helpers import PRETRAIN_OVERRIDES_JSON, REPO, free_port, pretrain_argv
from tools.synthetic_data import make_synthetic_pretrain_dataset

LOG_KEYS = {"train_lr", "train_loss", "train_loss_rec_all", "train_loss_rec_sfr", "train_loss_cl", "epoch"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_pretrain_dataset(tmp_path_factory.mktemp("faces"), 8, size=32, seed=0)


def _run(data_root, out, *extra) -> dict:
    return main(get_args_parser().parse_args(pretrain_argv(data_root, out, *extra)))


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_epoch_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _run(data_root, out)
    return out


def test_two_epoch_run_writes_every_output(two_epoch_run, data_root):
    out = two_epoch_run
    for name in ("checkpoint-0.pth", "checkpoint-te-0.pth", "checkpoint-1.pth", "checkpoint-te-1.pth",
                 "checkpoint-min_pretrain_loss.pth", "checkpoint-te-min_pretrain_loss.pth",
                 "pretrain_ds_mean_std.txt", "log_detail.txt", "log.txt"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    log = _log(out)
    assert [r["epoch"] for r in log] == [0, 1] and all(LOG_KEYS <= set(r) for r in log)
    stats = (out / "pretrain_ds_mean_std.txt").read_text().splitlines()
    assert len(stats) == 1 and set(json.loads(stats[0])) == {"mean", "std", "data_paths"}
    assert json.loads(stats[0])["data_paths"] == [str(Path(data_root).resolve())]
    detail = (out / "log_detail.txt").read_text()
    assert "Epoch: [1]" in detail and "Averaged stats" in detail


def test_checkpoints_load_safely_and_hold_both_networks(two_epoch_run):
    online, target = _load(two_epoch_run / "checkpoint-1.pth"), _load(two_epoch_run / "checkpoint-te-1.pth")
    assert {"model", "optimizer", "epoch", "args", "model_name"} <= set(online) and "scaler" not in online  # CPU: no scaler
    assert online["epoch"] == 1 and isinstance(online["args"], dict) and online["model_name"] == "fsfm_vit_base_patch16"
    assert "optimizer" not in target and "scaler" not in target and target["epoch"] == 1
    args = get_args_parser().parse_args(["--input_size", "32", "--model_overrides", PRETRAIN_OVERRIDES_JSON, "--norm_pix_loss"])
    model, tnet = build_networks(args, torch.device("cpu"))
    assert set(online["model"]) == set(model.state_dict()) and set(target["model"]) == set(tnet.state_dict())
    groups = online["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05] and tuple(groups[0]["betas"]) == (0.9, 0.95)
    n_no_decay = sum(1 for n, p in model.named_parameters() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias")))
    assert len(groups[0]["params"]) == n_no_decay
    # EMA moved the target between the two epochs
    te0 = _load(two_epoch_run / "checkpoint-te-0.pth")["model"]
    assert any(not torch.equal(te0[k], target["model"][k]) for k in te0)


def test_resume_restores_optimizer_and_continues(two_epoch_run, data_root, tmp_path):
    ckpt0 = two_epoch_run / "checkpoint-0.pth"
    args = get_args_parser().parse_args(pretrain_argv(data_root, tmp_path / "r", "--resume", str(ckpt0)))
    args.device = "cpu"
    model, target = build_networks(args, torch.device("cpu"))
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    run = _Run(model, target, opt, NativeScalerWithGradNormCount("cpu", enabled=False))
    resume(args, run, find_resume_set(args))
    saved = _load(ckpt0)
    assert args.start_epoch == 1 and run.run_id == saved["run_id"]  # a resumed run keeps its run id
    for key, state in saved["optimizer"]["state"].items():
        assert torch.equal(opt.state_dict()["state"][key]["exp_avg"], state["exp_avg"])
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in _load(two_epoch_run / "checkpoint-te-0.pth")["model"].items())

    out = tmp_path / "resumed"
    _run(data_root, out, "--resume", str(ckpt0))
    log, original = _log(out), _log(two_epoch_run)
    assert [r["epoch"] for r in log] == [1]
    assert log[0]["train_lr"] == pytest.approx(original[1]["train_lr"], rel=1e-12)
    steps = [s["step"] for s in _load(out / "checkpoint-1.pth")["optimizer"]["state"].values()]
    full = [s["step"] for s in _load(two_epoch_run / "checkpoint-1.pth")["optimizer"]["state"].values()]
    assert steps == full
    assert _load(out / "checkpoint-1.pth")["run_id"] == saved["run_id"]


def test_resume_from_released_format_pair(two_epoch_run, data_root, tmp_path):
    """Released pairs: ``args`` pickled as a Namespace, the optimizer in both files, no extra keys."""
    online, target = _load(two_epoch_run / "checkpoint-0.pth"), _load(two_epoch_run / "checkpoint-te-0.pth")
    ns = argparse.Namespace(**online["args"])
    for ckpt in (online, target):
        ckpt.update(args=ns, optimizer=online["optimizer"], scaler={})
        for key in ("model_name", "min_pretrain_loss", "network", "run_id", "set_role"):
            ckpt.pop(key, None)
    torch.save(online, tmp_path / "checkpoint-600.pth")
    target["optimizer"] = online["optimizer"]
    torch.save(target, tmp_path / "checkpoint-te-600.pth")
    args = get_args_parser().parse_args(pretrain_argv(data_root, tmp_path / "r", "--resume", str(tmp_path / "checkpoint-600.pth")))
    model, tnet = build_networks(args, torch.device("cpu"))
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    run = _Run(model, tnet, opt, NativeScalerWithGradNormCount("cpu", enabled=False))
    resume(args, run, find_resume_set(args))
    assert run.best_loss == float("inf") and len(run.run_id) == 32  # no run id in released files: a new one
    assert args.start_epoch == 1 and len(opt.state_dict()["state"]) == len(online["optimizer"]["state"])


def test_auto_resume_continues_in_the_same_folder(data_root, tmp_path):
    out = tmp_path / "auto"
    _run(data_root, out, "--epochs", "1")
    _run(data_root, out, "--auto_resume")
    assert [r["epoch"] for r in _log(out)] == [0, 1]
    assert len((out / "pretrain_ds_mean_std.txt").read_text().splitlines()) == 1
    assert _load(out / "checkpoint-1.pth")["epoch"] == 1


def test_resume_without_target_checkpoint_is_a_clear_error(two_epoch_run, data_root, tmp_path):
    lone = tmp_path / "checkpoint-0.pth"
    lone.write_bytes((two_epoch_run / "checkpoint-0.pth").read_bytes())
    with pytest.raises(Exception, match="resume_target_network"):
        _run(data_root, tmp_path / "x", "--resume", str(lone))


def test_both_local_rank_spellings_parse():
    parser = get_args_parser()
    assert parser.parse_args(["--local-rank=1"]).local_rank == 1
    assert parser.parse_args(["--local_rank", "2"]).local_rank == 2
    args = parser.parse_args(["--pretrain_data_path", "a", "--pretrain_data_path", "b"])
    assert args.data_path == ["a", "b"] and parser.parse_args([]).data_path is None


def _subprocess(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_torchrun_two_process_gloo(data_root, tmp_path):
    out = tmp_path / "ddp"
    _subprocess([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                 "127.0.0.1", "--master_port", str(free_port()), "fsvfm/main_pretrain.py",
                 *pretrain_argv(data_root, out)])
    detail = (out / "log_detail.txt").read_text()
    assert "processes: 2 (backend gloo)" in detail
    assert "online weights identical on all 2 ranks" in detail
    assert "target weights identical on all 2 ranks" in detail
    te0, te1 = (_load(out / f"checkpoint-te-{e}.pth")["model"] for e in (0, 1))
    online = _load(out / "checkpoint-1.pth")["model"]
    assert any(not torch.equal(te0[k], te1[k]) for k in te0)          # the EMA updates the target
    assert any(not torch.equal(te1[k], online[k]) for k in te1)       # ... towards, not onto, the online net
    # 8 samples, 2 ranks x batch 2 -> 2 iterations per epoch, each with the global mean loss
    assert [r["epoch"] for r in _log(out)] == [0, 1]


@pytest.mark.slow
def test_torch_distributed_launch_and_module_entry_points(data_root, tmp_path):
    out = tmp_path / "launch"
    _subprocess([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "1", "--master_port",
                 str(free_port()), "fsvfm/main_pretrain.py", *pretrain_argv(data_root, out, "--epochs", "1")])
    assert (out / "checkpoint-0.pth").is_file()
    result = _subprocess([sys.executable, "-m", "fsvfm.main_pretrain", "--help"])
    assert "--pretrain_data_path" in result.stdout and "--resume_target_network" in result.stdout


@pytest.mark.slow
def test_best_set_is_a_second_name_of_the_epoch_set(data_root, tmp_path):
    """The best-loss pair shares the epoch pair's files (one copy on disk); loading, resuming from it and a
    later best that replaces it all work, and the epoch's files keep their content."""
    import os

    from fsvfm.util.checkpoint import load_latest_checkpoint_set
    _run(data_root, tmp_path)
    for name in ("checkpoint-{}.pth", "checkpoint-te-{}.pth"):
        assert os.path.samefile(tmp_path / name.format(1), tmp_path / name.format("min_pretrain_loss"))
    manifest = json.loads((tmp_path / "checkpoint-min_pretrain_loss.set.json").read_text())
    assert manifest["tag"] == "min_pretrain_loss" and manifest["epoch"] == 1
    assert manifest["files"]["target"]["name"] == "checkpoint-te-min_pretrain_loss.pth"
    before = _load(tmp_path / "checkpoint-1.pth")
    _run(data_root, tmp_path, "--resume", str(tmp_path / "checkpoint-min_pretrain_loss.pth"), "--epochs", "3")
    assert [r["epoch"] for r in _log(tmp_path)] == [0, 1, 2]
    after = _load(tmp_path / "checkpoint-1.pth")
    assert after["epoch"] == 1 and torch.equal(after["model"]["cls_token"], before["model"]["cls_token"])
    best = _load(tmp_path / "checkpoint-min_pretrain_loss.pth")
    assert best["epoch"] == (2 if _log(tmp_path)[2]["train_loss"] < _log(tmp_path)[1]["train_loss"] else 1)
    assert load_latest_checkpoint_set(tmp_path).checkpoints["online"]["epoch"] == 2


def test_model_kwargs_is_the_one_flag_and_model_overrides_its_alias():
    parser = get_args_parser()
    new = parser.parse_args(["--model_kwargs", '{"depth": 2}'])
    old = parser.parse_args(["--model_overrides", '{"depth": 2}'])
    assert new.model_kwargs == old.model_kwargs == '{"depth": 2}' and not hasattr(old, "model_overrides")
