"""Helpers for the preprocessing tests: real photos, short videos written with OpenCV, file trees."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

REPO = Path(__file__).resolve().parents[1]
FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
PRETRAIN_DEFAULT = REPO / "datasets" / "pretrain" / "preprocess" / "config" / "default.py"
FINETUNE_DEFAULT = REPO / "datasets" / "finetune" / "preprocess" / "config" / "default.py"


def faces_dir() -> Path:
    if not FACES.is_dir():
        pytest.skip(f"{FACES} not present")
    return FACES


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


def write_image(path: Path, img: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), face_frame() if img is None else img)
    return path


def tree(root: Path) -> set[str]:
    """Relative POSIX paths of all files under ``root``."""
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()}


def frames(video: str, indices, ext: str = ".png") -> set[str]:
    return {f"{video}_frame_{i}{ext}" for i in indices}
