"""The demo pipeline on a real photo: variants -> dlib crop -> landmark parsing -> pre-training."""
from __future__ import annotations

import json

import numpy as np
import torch

from fsvfm import demo
from fsvfm.util.checkpoint import load_checkpoint

TINY = json.dumps(dict(embed_dim=48, depth=1, num_heads=2, rep_decoder_embed_dim=48, rep_decoder_depth=1,
                       rep_decoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                       projection_size=16, projection_hidden_size=64))


def test_demo_turns_real_photos_into_a_trained_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--variants", "3", "--epochs", "1", "--batch_size", "2",
                    "--workers", "1", "--model_overrides", TINY])
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
