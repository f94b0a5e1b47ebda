"""The demo pipeline on a real photo: variants -> dlib crop -> landmark parsing -> pre-training."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from fsvfm import demo
from fsvfm.predict import Detector
from fsvfm.util.checkpoint import load_checkpoint

TINY = json.dumps(dict(embed_dim=48, depth=1, num_heads=2, rep_decoder_embed_dim=48, rep_decoder_depth=1,
                       rep_decoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                       projection_size=16, projection_hidden_size=64))


def test_demo_turns_real_photos_into_a_trained_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--variants", "3", "--epochs", "1", "--batch_size", "2",
                    "--workers", "1", "--model_overrides", TINY, "--stage", "all"])
    assert rc == 0
    photos = sorted(p.name for p in (out / "photos").iterdir())
    assert photos == ["astronaut.png", "astronaut_v0.png", "astronaut_v1.png", "astronaut_v2.png"]
    images = sorted(p.stem for p in (out / "pretrain_data" / "images").glob("*.png"))
    maps = sorted(p.stem for p in (out / "pretrain_data" / "parsing_maps").glob("*.npy"))
    assert images == maps and len(images) >= 2
    pm = np.load(out / "pretrain_data" / "parsing_maps" / f"{images[0]}.npy")
    assert pm.shape == (1, 224, 224) and pm.dtype == np.int8
    assert {0, 1, 4, 5, 6} <= set(np.unique(pm).tolist())  # background, skin, both eyes, nose
    log = [json.loads(line) for line in (out / "pretrain" / "log.txt").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0]
    assert all(np.isfinite(log[0][k]) for k in ("train_loss", "train_loss_rec_all", "train_loss_cl"))
    ckpt = load_checkpoint(out / "pretrain" / "checkpoint-0.pth")
    assert ckpt["epoch"] == 0 and ckpt["model"]["cls_token"].shape == torch.Size([1, 1, 48])
    printed = capsys.readouterr().out
    assert f"{len(images)} parsed faces from real photos" in printed and "epoch 0: loss" in printed
    assert "toy DfD detector: val AUC" in printed
    from fsvfm.util.fileio import disk_usage
    size = disk_usage(out)
    assert printed.splitlines()[-1].startswith(f"outputs in {out.resolve()}: {size / 1e6:,.1f} MB on disk "
                                               "(hard links counted once), ")
    run = out / "finetune"
    assert os.path.samefile(run / "checkpoint-min_val_loss.pth", run / "checkpoint-0.pth")   # stored once
    assert size < sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    # --stage finetune (make app): a toy DfD detector from that checkpoint, real crops vs blended fakes
    n_val = len(images[::4])
    for split, n in (("train", len(images) - n_val), ("val", n_val)):
        for cls in ("real", "fake"):
            assert sorted(p.stem for p in (out / "finetune_data" / split / cls).glob("*.png")) == \
                [s for k, s in enumerate(images) if (k % 4 == 0) == (split == "val")][:n]
    real = cv2.imread(str(out / "finetune_data" / "val" / "real" / f"{images[0]}.png"))
    fake = cv2.imread(str(out / "finetune_data" / "val" / "fake" / f"{images[0]}.png"))
    changed = np.abs(real.astype(int) - fake.astype(int)).max(axis=2) > 0
    assert changed[100:180, 60:170].mean() > 0.5 and not changed[:20].any()  # inner face swapped, not the hair
    det = Detector.from_checkpoint(out / "finetune" / "checkpoint-min_val_loss.pth", device="cpu")
    assert det.info["task"] == "DfD" and det.info["input_size"] == 224
    assert det.info["warnings"][0] == "this detector was trained by the demo on toy data: its scores mean nothing"
    record = det.predict(out / "photos" / "astronaut.png")
    face = record["faces"][0]   # dlib's best of its 2 detections on the full photo: her face
    assert len(record["faces"]) == 2 and face["box"] == [162, 63, 279, 180]
    assert face["score_real"] + face["score_fake"] == pytest.approx(1.0, abs=1e-6)
