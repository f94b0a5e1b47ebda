"""The one home of what several test modules share: paths, tiny model configurations, generated images,
videos and file trees, tiny checkpoints written as the programs write them, command lines, a free port.

Test modules import from here, never from each other; fixtures shared between modules live in conftest.py.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import socket
import subprocess
import zlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from fsvfm import evaluation, main_finetune_DfD, main_pretrain, models_fsfm
from fsvfm.models_fas import create_fas_model
from fsvfm.registry import create_model
from fsvfm.util.checkpoint import save_checkpoint
from fsvfm.util.naming import DFD_VOCABULARY, UNIFIED_RELEASE_PATH
from fsvfm.util.norm_stats import STATS_FILENAME, write_mean_std
from tools.synthetic_data import make_synthetic_pretrain_dataset


def run_tests_of(task, argv, also=(), *, boundary: bool = False) -> dict:
    """The test program of ``task`` on ``argv``: its library ``main`` (errors propagate), or with
    ``boundary`` its ``cli`` (a user mistake: one line, exit code 2)."""
    get_args_parser, main, cli = evaluation.entry_points(task, also)
    return cli(argv) if boundary else main(get_args_parser().parse_args(argv))


# ------------------------------------------------------------------------------------ paths
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"          # the workspace's shared/ folder (real photos); absent in a plain clone
FACES = SHARED / "faces"
PRETRAIN_DEFAULT = REPO / "datasets" / "pretrain" / "preprocess" / "config" / "default.py"
FINETUNE_DEFAULT = REPO / "datasets" / "finetune" / "preprocess" / "config" / "default.py"


def faces_dir() -> Path:
    """``shared/faces`` (real photos), or a skip that says where to put them."""
    if not FACES.is_dir():
        pytest.skip(f"needs real face photos in {FACES} (the workspace's shared/faces folder beside the "
                    "repository; any folder of face photos placed there will do)")
    return FACES


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a rendezvous or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ tiny models
# A pre-training network small enough for CPU tests (widths must divide by the head counts).
TINY_FSFM = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, rep_decoder_embed_dim=48,
                 rep_decoder_depth=1, rep_decoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                 decoder_num_heads=2, projection_size=16, projection_hidden_size=64)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)
MODEL_KWARGS = json.dumps({k: v for k, v in TINY_VIT.items() if k != "img_size"})
PRETRAIN_OVERRIDES = {k: v for k, v in TINY_FSFM.items() if k != "img_size"}
PRETRAIN_OVERRIDES_JSON = json.dumps(PRETRAIN_OVERRIDES)


def tiny_fsfm(norm_pix_loss: bool = True) -> models_fsfm.FSFMViT:
    return create_model("fsfm_vit_small_patch16", norm_pix_loss=norm_pix_loss, **TINY_FSFM).eval()


def tiny_classifier(**kw):
    return create_model("vit_small_patch16", num_classes=2, **{**TINY_VIT, **kw})


# ------------------------------------------------------------------------------------ real photos, videos
@lru_cache(maxsize=1)
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(astronaut()[:, :, ::-1])


def face_frame() -> np.ndarray:
    """200x200 BGR cut of the astronaut photo around her face (about 90 px): fast to detect."""
    return astronaut_bgr()[30:230, 120:320].copy()


def write_video(path: Path, n_frames: int = 10, frame: np.ndarray | None = None) -> Path:
    """An ``n_frames`` MPEG-4 video of a real face, shifted by one pixel per frame."""
    frame = face_frame() if frame is None else frame
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, frame.shape[1::-1])
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    return path


def write_face_image(path: Path, img: np.ndarray | None = None) -> Path:
    """``img`` (BGR), by default the astronaut's face, written with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), face_frame() if img is None else img)
    return path


def tree(root: Path) -> set[str]:
    """Relative POSIX paths of all files under ``root``."""
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()}


def frames(video: str, indices, ext: str = ".png") -> set[str]:
    return {f"{video}_frame_{i}{ext}" for i in indices}


# ------------------------------------------------------------------------------------ generated data sets
def write_image(path: Path, real: bool, seed: int, size: int = 32) -> None:
    """Real images are brighter than fake ones, so a tiny model can separate them."""
    rng = np.random.default_rng(seed)
    base = 170 if real else 70
    arr = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_split_tree(root: Path, split: str, videos: int = 2, frames: int = 3,
                    classes: tuple[str, str] = ("fake_four", "real_youtube")) -> Path:
    """``root/split/{fake,real folder}/v{k}_frame_{j}.png``; returns ``root``."""
    for c, cls in enumerate(classes):
        real = DFD_VOCABULARY.label_of(cls) == 1
        for v in range(videos):
            for f in range(frames):
                write_image(root / split / cls / f"{cls}{v}_frame_{f}.png", real,
                            seed=zlib.crc32(f"{split}/{c}/{v}/{f}".encode()))
    return root


UNIFIED_CLASSES = ("real", "deepfake", "diffusion", "spoof")


def make_class_tree(root: Path, split: str, images: int = 2, classes=UNIFIED_CLASSES, size: int = 32) -> Path:
    """``root/split/{class}/{class}{k}_frame_0.png``: each class its own brightness, so a tiny model can learn it."""
    for c, name in enumerate(classes):
        for k in range(images):
            rng = np.random.default_rng(1000 * c + 10 * k + len(split))
            arr = np.clip(40 + 55 * c + rng.integers(-15, 15, (size, size, 3)), 0, 255).astype(np.uint8)
            path = root / split / name / f"{name}{k}_frame_0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


# ------------------------------------------------------------------------------------ command lines
def pretrain_argv(data_root, out, *extra) -> list[str]:
    return ["--pretrain_data_path", str(data_root), "--output_dir", str(out), "--device", "cpu",
            "--input_size", "32", "--model_overrides", PRETRAIN_OVERRIDES_JSON, "--batch_size", "2",
            "--num_workers", "0", "--epochs", "2", "--warmup_epochs", "1", "--save_freq", "1", "--norm_pix_loss",
            *extra]


def finetune_argv(pretrained: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--finetune", str(pretrained), "--finetune_data_path", str(data), "--output_dir", str(out),
            "--model", "vit_small_patch16", "--input_size", "32", "--model_kwargs", MODEL_KWARGS,
            "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--blr", "5e-3",
            "--num_workers", "0", "--device", "cpu", "--apply_simple_augment", "--mixup", "0.8",
            "--cutmix", "1.0", "--layer_decay", "0.65", "--print_freq", "50", *extra]


def eval_argv(resume: Path, out: Path, *extra: str) -> list[str]:
    return ["--eval", "--resume", str(resume), "--output_dir", str(out), "--input_size", "32",
            "--batch_size", "5", "--num_workers", "0", "--device", "cpu", *extra]


def dry_run(script: str, cwd: Path, **env: str) -> list[dict[str, str]]:
    """The commands a recipe script prints with ``DRY_RUN=1``: program, argv, env variables and flags."""
    out = subprocess.run(["bash", str(REPO / "scripts" / script)], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", **env}, check=True).stdout
    commands = []
    for line in out.strip().splitlines():  # VAR=value ... scripts/launch.sh PROGRAM --flag value ...
        words = shlex.split(line)
        launcher = words.index("scripts/launch.sh")
        flags = {w: (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else "")
                 for i, w in enumerate(words) if w.startswith("--")}
        env_vars = dict(w.split("=", 1) for w in words[:launcher])
        commands.append({"program": words[launcher + 1], "argv": words[launcher + 2:], **env_vars, **flags})
    return commands


def read_report(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    """A FAS ``performance.csv``-style report: header, {row name: values}."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, skipinitialspace=True))
    return rows[0], {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}


# ------------------------------------------------------------------------------------ tiny checkpoints
PRETRAIN_STATS = ([0.45, 0.4, 0.35], [0.25, 0.2, 0.22])
PRETRAIN_MEAN, PRETRAIN_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.2]


def write_pretrain_checkpoint(folder: Path, legacy: bool = False) -> Path:
    """A checkpoint as main_pretrain writes it (shared save function + stats file), or the
    released legacy layout (Namespace args, plain torch.save)."""
    torch.manual_seed(1)
    net = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    path = folder / "checkpoint-1.pth"
    folder.mkdir(parents=True, exist_ok=True)
    if legacy:
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "scaler": {},
                    "args": argparse.Namespace(model="fsfm_vit_small_patch16", mask_ratio=0.75)}, path)
    else:
        save_checkpoint(path, net.state_dict(), optimizer=opt, epoch=1, args={"model": "fsfm_vit_small_patch16"},
                        model_name="fsfm_vit_small_patch16")
    write_mean_std(folder / STATS_FILENAME, *PRETRAIN_STATS)
    return path


def pretrain_checkpoint(out: Path) -> tuple[Path, models_fsfm.FSFMViT]:
    """``out/checkpoint-1.pth`` of a tiny online network (norm_pix_loss, mask ratio 0.75) as main_pretrain
    writes it, the EMA target file beside it and its mean/std file; returns the path and the model."""
    torch.manual_seed(1)
    model = tiny_fsfm()
    args = {"model": "fsfm_vit_small_patch16", "model_overrides": PRETRAIN_OVERRIDES_JSON, "input_size": 32,
            "norm_pix_loss": True, "mask_ratio": 0.75}
    save_checkpoint(out / "checkpoint-1.pth", model.state_dict(), epoch=1, args=args)
    save_checkpoint(out / "checkpoint-te-1.pth", model.state_dict(), epoch=1, args=args, network="target")
    write_mean_std(out / STATS_FILENAME, PRETRAIN_MEAN, PRETRAIN_STD)
    return out / "checkpoint-1.pth", model


def pretrain_with_main(folder: Path) -> Path:
    """One epoch of main_pretrain (tiny FSFM, 4 synthetic faces); returns its checkpoint under ``folder/pre``."""
    faces = make_synthetic_pretrain_dataset(folder / "faces", 4, size=32, seed=0)
    pre = folder / "pre"
    main_pretrain.main(main_pretrain.get_args_parser().parse_args([
        "--pretrain_data_path", str(faces), "--output_dir", str(pre), "--device", "cpu", "--input_size", "32",
        "--model_overrides", PRETRAIN_OVERRIDES_JSON, "--batch_size", "2", "--num_workers", "0", "--epochs", "1",
        "--warmup_epochs", "1"]))
    return pre / "checkpoint-0.pth"


def detector_checkpoint(root: Path) -> Path:
    """``root/ft/checkpoint-min_val_loss.pth``: one epoch of DfD fine-tuning (32x32 input) on generated
    crops, starting from a tiny pre-training checkpoint."""
    data = make_split_tree(root / "data", "train", videos=2, frames=2)
    make_split_tree(data, "val", videos=1, frames=2)
    main_finetune_DfD.cli(finetune_argv(write_pretrain_checkpoint(root / "pre"), data, root / "ft", "--epochs", "1"))
    return root / "ft" / "checkpoint-min_val_loss.pth"


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
    torch.manual_seed(5)
    model = create_fas_model("vit_small_patch16", **TINY_VIT)
    kwargs = {k: v for k, v in TINY_VIT.items() if k != "img_size"}
    args = {"model": "vit_small_patch16", "input_size": 32, "model_kwargs": json.dumps(kwargs)}
    return save_checkpoint(root / "fas" / "msu_vit_0_shot_checkpoint_run_0.pth.tar", model.state_dict(),
                           model_key="state_dict", epoch=1, args=args, task="FAS", threshold=0.5)


# ------------------------------------------------------------------------------------ a hub cache
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PRE = "pretrained_models/FS-VFM_ViT-S_VF2_600e"
FT = "finetuned_models/FS-VFM_extensions/cross_dataset_DFD_and_DiFF/ViT-S_VF2_600e/FT_on_FF++_c23_32frames"


def add_to_cache(cache: Path, rel: str, data: bytes) -> None:
    """One file in the hub layout: ``blobs/<sha256>`` plus a relative symlink from the snapshot."""
    repo = cache / "models--Wolowolo--fsfm-3c"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / COMMIT / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
