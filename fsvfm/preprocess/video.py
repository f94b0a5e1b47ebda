"""Uniform frame sampling and OpenCV video reading (spec 1.1)."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from fsvfm.util.images import check_pixels, cv2_path
from fsvfm.util.naming import FRAME_SEPARATOR

logger = logging.getLogger(__name__)

# video files every reader accepts (custom preprocessing, fsvfm.predict, the web app); OpenCV decodes them
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def sample_indices(frame_count: float, num_frames: int | None) -> list[int]:
    """The original's indices: ``linspace(0, N-1, num_frames)`` truncated to int, or all frames.

    May contain repeats when the video has fewer frames than requested (see ``unique_indices``).
    """
    if num_frames is None:
        return list(range(int(frame_count)))
    if frame_count <= 0 or num_frames <= 0:
        return []
    return np.linspace(0, frame_count - 1, num_frames, dtype=int).tolist()


def unique_indices(frame_count: float, num_frames: int | None) -> list[int]:
    """``sample_indices`` without repeats (the original rewrote the same file), in order."""
    return sorted(set(sample_indices(frame_count, num_frames)))


def frame_name(video_name: str, index: int, img_format: str = ".png") -> str:
    """``{video}_frame_{idx}{ext}``; the test code recovers video names from the ``_frame_`` part."""
    return f"{video_name}{FRAME_SEPARATOR}{index}{img_format}"


def frame_count(path: str) -> int:
    """Frame count from the container metadata, counted by decoding when the metadata is missing.

    Returns -1 when the file cannot be opened as a video.
    """
    with cv2_path(path) as name:
        cap = cv2.VideoCapture(name)
    try:
        if not cap.isOpened():
            return -1
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n > 0:
            return n
        n = 0
        while cap.grab():
            n += 1
        return n if n > 0 else -1
    finally:
        cap.release()


def read_frames(path: str, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield ``(index, bgr_frame_or_None)`` for the wanted indices, in increasing order.

    Frames are decoded sequentially (grab without colour conversion for skipped frames), which is
    exact where seeking by ``CAP_PROP_POS_FRAMES`` is not; indices past the real end of the stream
    (metadata overestimating the count) come back as None so the caller can count them.
    """
    wanted = sorted(set(indices))
    with cv2_path(path) as name:  # an open capture keeps its file: the link may go
        cap = cv2.VideoCapture(name)
    try:
        pos, ok = 0, cap.isOpened()
        if ok:  # the pixel guard of the image readers, from the stream's header
            check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), path)
        for idx in wanted:
            while ok and pos < idx:
                ok = cap.grab()
                pos += 1
            frame = None
            if ok:
                ok, frame = cap.read()
                pos += 1
                frame = frame if ok else None
            yield idx, frame
    finally:
        cap.release()
