"""Tiny checkpoints shared by the prediction, picture and web-app tests: a DfD detector fine-tuned by
``main_finetune_DfD.py`` and an online pre-training network saved as ``main_pretrain.py`` saves it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fsvfm import main_finetune_DfD, models_fsfm
from fsvfm.registry import create_model
from fsvfm.util.checkpoint import save_checkpoint
from fsvfm.util.norm_stats import STATS_FILENAME, write_mean_std
from tests.conftest import TINY_FSFM
from tests.test_finetune_data import make_split_tree
from tests.test_finetune_e2e import finetune_argv, write_pretrain_checkpoint

PRETRAIN_OVERRIDES = {k: v for k, v in TINY_FSFM.items() if k != "img_size"}
PRETRAIN_MEAN, PRETRAIN_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.2]


def tiny_fsfm(norm_pix_loss: bool = True) -> models_fsfm.FSFMViT:
    return create_model("fsfm_vit_small_patch16", norm_pix_loss=norm_pix_loss, **TINY_FSFM).eval()


def detector_checkpoint(root: Path) -> Path:
    """``root/ft/checkpoint-min_val_loss.pth``: one epoch of DfD fine-tuning (32x32 input) on generated
    crops, starting from a tiny pre-training checkpoint."""
    data = make_split_tree(root / "data", "train", videos=2, frames=2)
    make_split_tree(data, "val", videos=1, frames=2)
    main_finetune_DfD.cli(finetune_argv(write_pretrain_checkpoint(root / "pre"), data, root / "ft", "--epochs", "1"))
    return root / "ft" / "checkpoint-min_val_loss.pth"


def pretrain_checkpoint(out: Path) -> tuple[Path, models_fsfm.FSFMViT]:
    """``out/checkpoint-1.pth`` of a tiny online network (norm_pix_loss, mask ratio 0.75) as main_pretrain
    writes it, the EMA target file beside it and its mean/std file; returns the path and the model."""
    torch.manual_seed(1)
    model = tiny_fsfm()
    args = {"model": "fsfm_vit_small_patch16", "model_overrides": json.dumps(PRETRAIN_OVERRIDES), "input_size": 32,
            "norm_pix_loss": True, "mask_ratio": 0.75}
    save_checkpoint(out / "checkpoint-1.pth", model.state_dict(), epoch=1, args=args)
    save_checkpoint(out / "checkpoint-te-1.pth", model.state_dict(), epoch=1, args=args, network="target")
    write_mean_std(out / STATS_FILENAME, PRETRAIN_MEAN, PRETRAIN_STD)
    return out / "checkpoint-1.pth", model


UNIFIED_CLASSES = ("real", "deepfake", "diffusion", "spoof")


def make_class_tree(root: Path, split: str, images: int = 2, classes=UNIFIED_CLASSES, size: int = 32) -> Path:
    """``root/split/{class}/{class}{k}_frame_0.png``: each class its own brightness, so a tiny model can learn it."""
    import numpy as np
    from PIL import Image
    for c, name in enumerate(classes):
        for k in range(images):
            rng = np.random.default_rng(1000 * c + 10 * k + len(split))
            arr = np.clip(40 + 55 * c + rng.integers(-15, 15, (size, size, 3)), 0, 255).astype(np.uint8)
            path = root / split / name / f"{name}{k}_frame_0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


def unified_detector_checkpoint(root: Path, *extra: str) -> Path:
    """``root/ft4/checkpoint-min_val_loss.pth``: one epoch of ``main_finetune_DfD.py --task Unified`` (4 classes,
    32x32) on ``root/data4/{train,val,test}/{real,deepfake,diffusion,spoof}``."""
    data = root / "data4"
    for split in ("train", "val", "test"):
        make_class_tree(data, split)
    argv = finetune_argv(write_pretrain_checkpoint(root / "pre4"), data, root / "ft4", "--epochs", "1", "--mixup", "0",
                         "--cutmix", "0", "--task", "Unified", "--classes", ",".join(UNIFIED_CLASSES), *extra)
    main_finetune_DfD.cli(argv)
    return root / "ft4" / "checkpoint-min_val_loss.pth"


def released_unified_checkpoint(root: Path) -> Path:
    """A tiny 4-class classifier saved the way the released unified detector is: keys model / optimizer / epoch /
    scaler / args (an ``argparse.Namespace``), no ``classes`` key, at the release's repository path under ``root``
    (so its class names come from the known-release table). Its head's bias makes ``deepfake`` the likely winner."""
    import argparse

    from fsvfm.util.naming import UNIFIED_RELEASE_PATH
    from tests.conftest import TINY_VIT
    torch.manual_seed(4)
    model = create_model("vit_small_patch16", family="classifier", num_classes=4, global_pool=True, **TINY_VIT)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 2.0, 0.5, -1.0]))
    kwargs = {k: v for k, v in TINY_VIT.items() if k != "img_size"}
    args = argparse.Namespace(model="vit_small_patch16", nb_classes=4, input_size=32, global_pool=True, drop_path=0.1,
                              normalize_from_IMN=False, apply_simple_augment=True, model_kwargs=json.dumps(kwargs))
    path = root / UNIFIED_RELEASE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 9,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}, "args": args}, path)
    return path


def fas_checkpoint(root: Path) -> Path:
    """``root/fas/msu_vit_0_shot_checkpoint_run_0.pth.tar``: a tiny FAS network (32x32) under the FAS files'
    ``state_dict`` key, with the args that rebuild it, as the FAS program writes it (no training)."""
    from fsvfm.models_fas import create_fas_model
    from tests.conftest import TINY_VIT
    torch.manual_seed(5)
    model = create_fas_model("vit_small_patch16", **TINY_VIT)
    kwargs = {k: v for k, v in TINY_VIT.items() if k != "img_size"}
    args = {"model": "vit_small_patch16", "input_size": 32, "model_kwargs": json.dumps(kwargs)}
    return save_checkpoint(root / "fas" / "msu_vit_0_shot_checkpoint_run_0.pth.tar", model.state_dict(),
                           model_key="state_dict", epoch=1, args=args, task="FAS", threshold=0.5)
