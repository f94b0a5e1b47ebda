"""Checkpoint sets (online + target written as one unit), non-finite weights, file-format checks and
resume hygiene (stale temp files, duplicate log records), including a kill -9 drill at each moment of a
set save."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fsvfm.util import checkpoint as ckpt
from tests.helpers import REPO


def _payloads(value: float) -> dict[str, dict]:
    return {"online": ckpt.checkpoint_payload({"w": torch.full((4,), value)}, epoch=None),
            "target": ckpt.checkpoint_payload({"w": torch.full((4,), -value)}, epoch=None)}


def _save(folder: Path, epoch: int, run_id: str = "run-a", tag: int | str | None = None) -> Path:
    return ckpt.save_checkpoint_set(folder, epoch if tag is None else tag, _payloads(float(epoch)), epoch=epoch,
                                    run_id=run_id)


def test_set_round_trip_and_manifest(tmp_path):
    _save(tmp_path, 0)
    manifest = _save(tmp_path, 1)
    assert manifest.name == "checkpoint-1.set.json"
    record = json.loads(manifest.read_text())
    assert record["epoch"] == 1 and record["run_id"] == "run-a"
    assert record["files"]["online"] == {"name": "checkpoint-1.pth",
                                         "size": (tmp_path / "checkpoint-1.pth").stat().st_size}
    found = ckpt.load_latest_checkpoint_set(tmp_path)
    assert found.tag == "1" and found.epoch == 1
    assert found.paths == {"online": tmp_path / "checkpoint-1.pth", "target": tmp_path / "checkpoint-te-1.pth"}
    assert torch.equal(found.checkpoints["target"]["model"]["w"], torch.full((4,), -1.0))
    assert found.checkpoints["online"]["set_role"] == "online" and found.checkpoints["target"]["run_id"] == "run-a"
    assert ckpt.load_latest_checkpoint_set(tmp_path / "empty") is None


@pytest.mark.parametrize("damage", ["truncate_online", "delete_target", "garbage_target", "no_manifest"])
def test_newest_damaged_set_falls_back_to_the_previous(tmp_path, caplog, damage):
    _save(tmp_path, 0)
    _save(tmp_path, 1)
    online, target = tmp_path / "checkpoint-1.pth", tmp_path / "checkpoint-te-1.pth"
    if damage == "truncate_online":
        online.write_bytes(online.read_bytes()[:100])
    elif damage == "delete_target":
        target.unlink()
    elif damage == "garbage_target":  # same size, unreadable content
        target.write_bytes(b"PK\x03\x04" + b"\0" * (target.stat().st_size - 4))
    else:
        (tmp_path / "checkpoint-1.set.json").unlink()
    with caplog.at_level("WARNING"):
        found = ckpt.load_latest_checkpoint_set(tmp_path)
    assert found.epoch == 0 and found.tag == "0"
    reason = {"truncate_online": "is 100 bytes, its manifest says", "delete_target": "checkpoint-te-1.pth is missing",
              "garbage_target": "cannot read checkpoint", "no_manifest": "the save of this set was interrupted"}
    assert "skipping checkpoint set 1" in caplog.text and reason[damage] in caplog.text


def test_files_of_different_epochs_or_runs_are_refused(tmp_path):
    _save(tmp_path, 0)
    _save(tmp_path, 1)
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint-1.pth has epoch 1, .*checkpoint-te-0.pth has epoch 0"):
        ckpt.load_checkpoint_set({"online": tmp_path / "checkpoint-1.pth", "target": tmp_path / "checkpoint-te-0.pth"})
    other = tmp_path / "other"
    _save(other, 1, run_id="run-b")
    with pytest.raises(ckpt.CheckpointError, match="run_id"):
        ckpt.load_checkpoint_set({"online": tmp_path / "checkpoint-1.pth", "target": other / "checkpoint-te-1.pth"})
    # a listed member replaced by another run's file of the same size
    (tmp_path / "checkpoint-te-1.pth").write_bytes((other / "checkpoint-te-1.pth").read_bytes())
    assert ckpt.load_latest_checkpoint_set(tmp_path).epoch == 0


def test_pairs_saved_before_manifests_still_resume(tmp_path):
    for epoch in (3, 4):
        ckpt.save_checkpoint(tmp_path / f"checkpoint-{epoch}.pth", {"w": torch.zeros(1)}, epoch=epoch)
        ckpt.save_checkpoint(tmp_path / f"checkpoint-te-{epoch}.pth", {"w": torch.zeros(1)}, epoch=epoch - (epoch == 4))
    found = ckpt.load_latest_checkpoint_set(tmp_path)  # set 4 holds online epoch 4 with target epoch 3
    assert found.epoch == 3 and found.tag == "3"


def test_stale_temp_files_are_removed(tmp_path):
    names = [".checkpoint-3.pth.a1b2c3d4.tmp", ".checkpoint-3.pth.x_Yz09ab.tmp.pth", ".log.txt.k2.tmp",
             "checkpoint-3.pth", ".hidden", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = ckpt.remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:3])
    assert sorted(os.listdir(tmp_path)) == [".hidden", "checkpoint-3.pth", "notes.tmp"]


def test_drop_log_records_from(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("".join(json.dumps({"epoch": e, "loss": 1.0}) + "\n" for e in (0, 1, 2, 3)) + "not json\n")
    assert ckpt.drop_log_records_from(log, 2) == 2
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()[:2]] == [0, 1]
    assert log.read_text().splitlines()[2] == "not json"
    assert ckpt.drop_log_records_from(log, 5) == 0 and ckpt.drop_log_records_from(tmp_path / "none.txt", 0) == 0


def test_non_finite_weights_are_named(tmp_path):
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), float("inf")]), "steps": torch.tensor(3),
             "c": torch.full((2,), float("nan"))}
    with pytest.raises(ckpt.NonFiniteWeightsError,
                       match=r"run X holds non-finite weights in 2 of 3 tensors, first: b \(1 NaN, 1 inf of 3\), "
                             r"c \(2 NaN, 0 inf of 2\); fix"):
        ckpt.check_finite_state(state, "run X", hint="; fix")
    module = torch.nn.Linear(2, 2)
    ckpt.check_finite_state(module, "fine")
    with torch.no_grad():
        module.bias[0] = float("inf")
    with pytest.raises(ckpt.NonFiniteWeightsError, match="bias"):
        ckpt.check_finite_state(module, "layer")
    path = tmp_path / "nan.pth"
    ckpt.save_checkpoint(path, state)
    with pytest.raises(ckpt.NonFiniteWeightsError, match=f"checkpoint {path} holds non-finite .* cannot be used"):
        ckpt.model_state_from(ckpt.load_checkpoint(path), path)


def test_non_checkpoint_files_are_named_for_what_they_are(tmp_path):
    png = tmp_path / "face.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(ckpt.CheckpointError, match=r"face.png is not a PyTorch checkpoint: it is a PNG image") as err:
        ckpt.load_checkpoint(png)
    assert "code" not in str(err.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="empty.pth is empty"):
        ckpt.load_checkpoint(tmp_path / "empty.pth")


# ----------------------------------------------------------------------------- kill -9 drill
_DRILL = """
import sys, torch
from fsvfm.util import checkpoint as ckpt
folder, stage = sys.argv[1], sys.argv[2]
def payloads(v):
    return {"online": ckpt.checkpoint_payload({"w": torch.full((4,), v)}), "target": ckpt.checkpoint_payload({"w": torch.full((4,), -v)})}
ckpt.save_checkpoint_set(folder, 0, payloads(0.0), epoch=0, run_id="r")
ckpt.save_checkpoint_set(folder, "min_pretrain_loss", payloads(0.0), epoch=0, run_id="r")
import os; os.environ[ckpt.DRILL_ENV] = stage
ckpt.save_checkpoint_set(folder, {tag!r}, payloads(1.0), epoch=1, run_id="r")
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["before-renames", "between-renames", "before-manifest"])
def test_kill_during_a_set_save_leaves_the_previous_set_usable(tmp_path, stage):
    """The process is killed (SIGKILL) while it saves set 1 (and, in a second run, while it overwrites
    the min-loss set): the reader falls back to set 0, the interrupted set is never returned."""
    for tag in (1, "min_pretrain_loss"):
        folder = tmp_path / str(tag)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", _DRILL.replace("{tag!r}", repr(tag)), str(folder), stage], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                if f"checkpoint drill: pausing at {stage}" in line:
                    break
            else:
                pytest.fail(f"the drill never reached {stage} (exit code {proc.wait()})")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        found = ckpt.load_latest_checkpoint_set(folder)
        assert found.epoch == 0 and torch.equal(found.checkpoints["target"]["model"]["w"], torch.zeros(4))
        manifest = folder / f"checkpoint-{tag}.set.json"
        assert not manifest.exists()  # the interrupted set is absent, never half-present
        stale = ckpt.remove_stale_temp_files(folder)
        assert len(stale) == {"before-renames": 2, "between-renames": 1, "before-manifest": 0}[stage]
        assert not [p for p in folder.iterdir() if ".tmp" in p.name]
