"""Shared run policies: the checkpoint-save rule, --world_size and --log_dir, class vocabularies."""
from __future__ import annotations

import argparse

import pytest

from fsvfm.util import dist
from fsvfm.util.checkpoint import CheckpointError, epoch_checkpoint_tags, resume_path
from fsvfm.util.naming import DFD_VOCABULARY, ClassVocabulary


def test_epoch_checkpoint_tags():
    args = argparse.Namespace(save_freq=3, epochs=5)
    assert [epoch_checkpoint_tags(e, args, False, "best") for e in range(5)] == [[], [], [2], [], [4]]
    assert epoch_checkpoint_tags(2, args, True, "min_val_loss") == ["min_val_loss", 2]


def test_resume_path(tmp_path):
    args = argparse.Namespace(resume="", auto_resume=True, output_dir=str(tmp_path))
    assert resume_path(args) is None
    for name in ("checkpoint-1.pth", "checkpoint-10.pth", "checkpoint-min_val_loss.pth", "checkpoint-te-12.pth"):
        (tmp_path / name).write_bytes(b"")
    assert resume_path(args) == tmp_path / "checkpoint-10.pth"
    with pytest.raises(CheckpointError, match="--resume checkpoint not found: .*x.pth"):
        resume_path(argparse.Namespace(resume=str(tmp_path / "x.pth"), auto_resume=True, output_dir=""))
    (tmp_path / "x.pth").write_bytes(b"")
    assert resume_path(argparse.Namespace(resume=str(tmp_path / "x.pth"), auto_resume=True, output_dir="")).name == "x.pth"


def test_world_size_flag_is_checked(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(world_size=2, device="cpu")
    with pytest.raises(ValueError, match="--world_size 2 but 1 process"):
        dist.init_distributed_mode(args)
    args = argparse.Namespace(world_size=None, device="cpu")
    dist.init_distributed_mode(args)
    assert (args.world_size, args.distributed, args.device) == (1, False, "cpu")


def test_log_dir_receives_the_tensorboard_events(tmp_path):
    from fsvfm.util.args import default_output_dir
    from fsvfm.util.log import summary_writer
    args = argparse.Namespace(output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "tb"))
    default_output_dir(args, "finetune")
    writer = summary_writer(args)
    writer.add_scalar("x", 1.0, 0)
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and not (tmp_path / "out").exists()
    args = argparse.Namespace(output_dir=str(tmp_path / "out"), log_dir="")
    default_output_dir(args, "finetune")
    assert args.log_dir == str(tmp_path / "out")


def test_class_vocabularies():
    fas = ClassVocabulary(words=(("spoof", "attack", "fake"), ("live", "real")), positive=1)
    assert [fas.label_of(n) for n in ("live", "Real_frames", "print_attack", "spoof", "fake_replay")] == [1, 1, 0, 0, 0]
    assert fas.names == ("spoof", "live") and DFD_VOCABULARY.names == ("fake", "real")
    with pytest.raises(ValueError, match="'spoof', 'attack', 'fake' / 'live', 'real'"):
        fas.label_of("live_attack")
