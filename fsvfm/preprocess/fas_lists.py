"""FAS list files of your own live/spoof face frames, for ``main_finetune_FAS.py --config custom``.

    python -m fsvfm.preprocess.fas_lists --src FRAMES --dst FAS_ROOT [--test_fraction 0.25] [--seed 0]

``FRAMES`` holds class folders (``live``/``real`` and ``spoof``/``attack``/``fake``, any depth below them),
either directly (then whole videos are split into train and test at random, ``--test_fraction``) or under
``train/`` and ``test/`` (your own split). Frames are grouped into videos by the FAS rule: the path without
``frame0.png``/``frame1.png`` (``{video}_frame0.png`` and ``{video}_frame1.png`` are one video; any other
image is a video of its own), so both frames of a video always land in the same split.

Written (atomically): ``FAS_ROOT/WCS/txt/custom_{real,fake}_{train,test}.txt``, one frame per line (live =
``real``, spoof = ``fake``, the reader's names), relative to ``FAS_ROOT/WCS/frame/`` when the frames lie
below it, else absolute. The protocol is ``--config custom``: trained on the train lists, tested on the
test lists of the same domain (no cross-domain claim; no held-out source threshold). Videos are refused
with the command that makes face chips of them first.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from fsvfm.data.fas import CLASSES, CUSTOM_DOMAIN, frame_root, list_path, twin_frame
from fsvfm.preprocess.layouts import list_files
from fsvfm.preprocess.video import VIDEO_EXTENSIONS
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.fileio import atomic_write_text
from fsvfm.util.naming import FAS_VOCABULARY, IMAGE_EXTENSIONS, VIDEO_KEYS

logger = logging.getLogger(__name__)

LIST_CLASS = {label: name for name, label in CLASSES}   # list-file names: 0 (spoof) fake, 1 (live) real
SPLITS = ("train", "test")


def class_frames(folder: Path) -> dict[int, list[Path]]:
    """``{0: spoof frames, 1: live frames}`` of a folder of class folders (class by folder name)."""
    out: dict[int, list[Path]] = {0: [], 1: []}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[FAS_VOCABULARY.label_of(sub.name, folder)] += list_files(sub, IMAGE_EXTENSIONS)
    return out


def group_videos(frames: list[Path]) -> dict[str, list[Path]]:
    """Frames by video key (first-seen order of the sorted frames)."""
    videos: dict[str, list[Path]] = {}
    for f in frames:
        videos.setdefault(VIDEO_KEYS["fas"](str(f)), []).append(f)
    return videos


def split_videos(frames: list[Path], test_fraction: float, seed: int, what: str) -> dict[str, list[Path]]:
    """``{'train': frames, 'test': frames}``: whole videos, ``round(test_fraction * videos)`` (at least one) tested."""
    videos = group_videos(frames)
    if len(videos) < 2:
        raise DataError(f"{what}: {len(videos)} video(s); a train/test split needs at least 2 per class "
                        "(or give train/ and test/ folders)")
    keys = list(videos)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_test = min(len(keys) - 1, max(1, round(test_fraction * len(keys))))
    test = {keys[i] for i in order[:n_test]}
    return {s: [f for k in keys if (k in test) == (s == "test") for f in videos[k]] for s in SPLITS}


def _line(frame: Path, base: Path) -> str:
    """A list line: relative to the domain group's ``frame/`` folder when below it, else absolute."""
    frame, base = frame.resolve(), base.resolve()
    return frame.relative_to(base).as_posix() if frame.is_relative_to(base) else str(frame)


def _check_twins(frames: list[Path], where: str) -> None:
    """The reader adds ``twin_frame`` for every ``frame0`` test line: that twin must exist."""
    lonely = [f for f in frames if "frame0" in str(f) and not Path(twin_frame(str(f))).is_file()]
    if lonely:
        raise DataError(f"{where}: {len(lonely)} test frame(s) named *frame0* without their *frame1* twin, e.g. "
                        f"{lonely[0]}: the FAS reader reads both frames of a test video; add the frame1 images "
                        "or rename the frames")


def write_fas_lists(src: str | os.PathLike, dst: str | os.PathLike, test_fraction: float = 0.25,
                    seed: int = 0) -> dict[str, dict[str, int]]:
    """Write the four ``custom`` list files for the frames under ``src``; returns
    ``{list file: {'frames': n, 'videos': v}}``. ``DataError`` for data that cannot make a protocol."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UsageError(f"--src {src}: folder not found")
    videos = list_files(src, VIDEO_EXTENSIONS)
    if videos:
        raise UsageError(f"--src {src} holds {len(videos)} video(s), e.g. {videos[0]}: FAS lists name face chips; "
                         "make two chips per video first, one class at a time: python datasets/finetune/"
                         "preprocess_FAS/preprocess_MCIO.py --dataset custom --src VIDEOS/live --dst FRAMES/live "
                         "(and spoof), then rerun with --src FRAMES")
    if not 0 < test_fraction < 1:
        raise UsageError(f"--test_fraction {test_fraction}: give a value between 0 and 1")
    names = {p.name.lower() for p in src.iterdir() if p.is_dir()}
    if {"train", "test"} <= names:
        per_split = {s: class_frames(src / s) for s in SPLITS}
        splits = {(s, c): per_split[s][c] for s in SPLITS for c in (0, 1)}
    else:
        frames = class_frames(src)
        splits = {}
        for c in (0, 1):
            parts = split_videos(frames[c], test_fraction, seed + c, f"{src} ({FAS_VOCABULARY.names[c]})")
            splits.update({(s, c): parts[s] for s in SPLITS})
    empty = [f"{s}/{FAS_VOCABULARY.names[c]}" for (s, c), f in splits.items() if not f]
    if empty:
        raise DataError(f"--src {src}: no frames for {', '.join(empty)} (class folders are named live/real and "
                        "spoof/attack/fake; frames are image files)")
    base = frame_root(dst, CUSTOM_DOMAIN)
    for c in (0, 1):
        _check_twins(splits[("test", c)], f"{src} (test, {FAS_VOCABULARY.names[c]})")
    summary = {}
    for (split, c), frames in splits.items():
        path = list_path(dst, CUSTOM_DOMAIN, LIST_CLASS[c], split)
        atomic_write_text(path, "".join(_line(f, base) + "\n" for f in frames))
        summary[str(path)] = {"frames": len(frames), "videos": len(group_videos(frames))}
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m fsvfm.preprocess.fas_lists",
                                description="FAS list files of your own live/spoof frames (--config custom)")
    p.add_argument("--src", required=True, help="folder of class folders live/ and spoof/ (or train/ and test/ "
                                                "each holding them) with face frames")
    p.add_argument("--dst", required=True, help="the --fas_data_root to write WCS/txt/custom_*.txt under")
    p.add_argument("--test_fraction", type=float, default=0.25,
                   help="share of each class's videos tested when --src has no train/ and test/ (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random video split")
    return p


def main(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    summary = write_fas_lists(args.src, args.dst, args.test_fraction, args.seed)
    for path, n in summary.items():
        print(f"{path}: {n['frames']} frames, {n['videos']} video(s)")
    print(f"train and test with: python fsvfm/main_finetune_FAS.py --config {CUSTOM_DOMAIN} --fas_data_root {args.dst} ...")
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser())
