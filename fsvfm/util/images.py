"""The one reader of image and video files: every way a file can be unusable turned into one error.

* Files are read as bytes (``np.fromfile``-style) and decoded from memory, so a file name that is not
  valid UTF-8 (a Latin-1 ``caf\\xe9.jpg`` from an archive or a Samba share) cannot crash OpenCV, which
  dies on such ``str`` paths; ``cv2_path`` gives videos a name OpenCV can open.
* One pixel-count guard (``max_pixels``, ``--max_megapixels``) is read from the header before
  anything is decoded, in every reader: a small file that decodes to a huge image is refused.
* ``read_bgr(path, warnings)`` notes a truncated JPEG/PNG that still decodes.

Pillow raises ``OSError`` (missing, empty, truncated, unknown format), ``ValueError`` /
``SyntaxError`` / ``EOFError`` / ``struct.error`` / ``zlib.error`` (broken headers or streams) and
``Image.DecompressionBombError`` (not an ``OSError``; our guard refuses such files first).

``SkipsUnreadable`` is the one skip-and-count policy of the pre-training and fine-tuning data sets;
``unreadable_files`` lists what they skipped.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from fsvfm.util import dist
from fsvfm.util.errors import DataError

logger = logging.getLogger(__name__)

MAX_UNREADABLE_IN_A_ROW = 50

UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


# Pillow's own bomb limit (twice its warning threshold), which pre-training always used: far above
# real photos (a 100-megapixel camera) and 4K/8K frames (8.3/33 megapixels).
DEFAULT_MAX_PIXELS = 2 * 89_478_485
MAX_PIXELS_ENV = "FSVFM_MAX_PIXELS"  # carries --max_megapixels to worker processes (fork or spawn)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message names the file and the reason."""


class ImageTooLargeError(UnreadableImageError):
    """An image whose header declares more pixels than ``max_pixels()``: refused before decoding."""


def max_pixels() -> int:
    """The largest width x height any reader decodes (``--max_megapixels``; default about 179 MP)."""
    value = os.environ.get(MAX_PIXELS_ENV)
    return int(value) if value else DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> None:
    """Set the pixel limit of every reader in this process and the processes it starts (None: default)."""
    if limit is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
    else:
        if limit < 1:
            raise ValueError(f"the pixel limit must be positive, got {limit}")
        os.environ[MAX_PIXELS_ENV] = str(int(limit))
    # Pillow refuses above twice this at open time; ours (lower) answers first, with our message
    Image.MAX_IMAGE_PIXELS = max_pixels()


Image.MAX_IMAGE_PIXELS = max_pixels()  # a worker started with FSVFM_MAX_PIXELS set


def add_max_pixels_flag(parser) -> None:
    """``--max_megapixels``: raise (or lower) the pixel guard of every image reader."""
    parser.add_argument("--max_megapixels", type=float, default=None, metavar="MP",
                        help=f"refuse images larger than this many megapixels before decoding them "
                             f"(default {DEFAULT_MAX_PIXELS / 1e6:.0f})")


def apply_max_pixels_flag(args) -> None:
    """Apply ``args.max_megapixels`` (when given) with ``set_max_pixels``."""
    mp = getattr(args, "max_megapixels", None)
    if mp is not None:
        if mp <= 0:
            from fsvfm.util.errors import UsageError
            raise UsageError(f"--max_megapixels must be positive, got {mp}")
        set_max_pixels(int(mp * 1e6))


def check_pixels(width: int, height: int, name: object = "image") -> None:
    """``ImageTooLargeError`` naming ``name`` when ``width x height`` exceeds ``max_pixels()``."""
    limit = max_pixels()
    if width * height > limit:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the limit of "
            f"{limit / 1e6:.0f}; refused before decoding (raise it with --max_megapixels)")


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _header_only() -> Iterator[None]:
    """Pillow's own bomb check off while a header is read (nothing is decoded), so ours reports the size."""
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an encoded image's header (Pillow's lazy open), None when Pillow does
    not know the format (OpenCV's own limit then applies, and the decoded size is checked)."""
    try:
        with _header_only(), Image.open(io.BytesIO(data)) as img:
            return img.size
    except UNREADABLE_IMAGE_ERRORS:
        return None


def truncation_warning(data: bytes) -> str | None:
    """A note when a JPEG lacks its end-of-image marker or a PNG its IEND chunk (decoders fill the rest)."""
    if data[:3] == b"\xff\xd8\xff" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker): the missing part was filled in grey"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        return "truncated PNG (no IEND chunk)"
    return None


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file; ``UnreadableImageError`` naming it when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UnreadableImageError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


def decode_bgr(data: bytes, name: object = "image", warnings: list[str] | None = None,
               flags: int | None = None) -> np.ndarray:
    """An encoded image -> BGR uint8 [H, W, 3] (OpenCV from memory), after the pixel guard;
    ``UnreadableImageError`` naming ``name`` when it cannot be decoded. A truncated file that still
    decodes adds a note to ``warnings``."""
    import cv2
    size = header_size(data)
    if size is not None:
        check_pixels(*size, name)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if flags is None else flags) if data else None
    note = truncation_warning(data)
    if img is None and note and size is not None:
        img = _decode_truncated(data)  # OpenCV refuses a cut file; Pillow decodes the part that is there
    if img is None:
        raise UnreadableImageError(f"unreadable image {name}: not an image OpenCV can decode")
    if size is None:
        check_pixels(img.shape[1], img.shape[0], name)
    if note and warnings is not None:
        warnings.append(note)
    return img


def _decode_truncated(data: bytes) -> np.ndarray | None:
    from PIL import ImageFile
    with _PIL_LIMIT_LOCK:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
        try:
            with Image.open(io.BytesIO(data)) as img:
                return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
        except UNREADABLE_IMAGE_ERRORS:
            return None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def read_bgr(path: str | os.PathLike, warnings: list[str] | None = None) -> np.ndarray:
    """The BGR uint8 image [H, W, 3] of a file, whatever its name's encoding (``decode_bgr``)."""
    return decode_bgr(read_file_bytes(path), path, warnings)


def open_image(path: str | os.PathLike) -> Image.Image:
    """A lazily opened PIL image of ``path`` after the pixel guard (use it in a ``with``)."""
    with _header_only():
        img = Image.open(path)
    try:
        check_pixels(*img.size, path)
    except ImageTooLargeError:
        img.close()
        raise
    return img


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully as an RGB PIL image (after the pixel guard); ``UnreadableImageError``
    naming it otherwise."""
    try:
        with open_image(path) as img:
            return img.convert("RGB")
    except UnreadableImageError:
        raise
    except UNREADABLE_IMAGE_ERRORS as e:
        raise UnreadableImageError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


def opencv_safe(path: str | os.PathLike) -> bool:
    """Whether OpenCV can be given ``path`` as it is (valid UTF-8 text; lone surrogates crash it)."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeError:
        return False
    return True


@contextlib.contextmanager
def cv2_path(path: str | os.PathLike | bytes) -> Iterator[str]:
    """A name OpenCV (``cv2.VideoCapture``) can open for ``path``: the path itself, or, when it is not
    valid UTF-8, an ASCII-named symbolic link to it in a temporary folder removed afterwards."""
    text = os.fsdecode(path)
    if opencv_safe(text):
        yield text
        return
    folder = tempfile.mkdtemp(prefix="fsvfm-media-")
    try:
        suffix = "".join(c for c in Path(text).suffix if c.isascii() and c.isalnum() or c == ".")
        link = os.path.join(folder, "input" + suffix)
        os.symlink(os.path.abspath(os.fsencode(path)), os.fsencode(link))
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class SkipsUnreadable:
    """Mixin for data sets whose ``samples[i][0]`` is the file of sample ``i`` and whose
    ``load_sample(i)`` reads it, raising one of ``unreadable_errors`` when it cannot be used.

    ``load_readable(index)`` returns the first readable sample from ``index`` on (wrapping around):
    an unreadable one is flagged in ``unreadable_flags`` (shared memory, so DataLoader workers'
    findings reach the main process; ``unreadable_files`` lists them), named once in the log
    (``skip_message``) and replaced by the next; ``MAX_UNREADABLE_IN_A_ROW`` in a row are a
    ``DataError``. Call ``_track_unreadable()`` once ``samples`` is set.
    """

    samples: Sequence[tuple]
    unreadable_errors: tuple[type[BaseException], ...] = (UnreadableImageError,)
    skip_message = "skipping %s"

    def _track_unreadable(self) -> None:
        self.unreadable_flags = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def load_sample(self, index: int) -> Any:
        raise NotImplementedError

    def load_readable(self, index: int, replace: bool = True) -> tuple[int, Any]:
        """``(i, load_sample(i))`` of the first readable sample from ``index`` on; with
        ``replace=False`` only ``index`` is tried and an unreadable one gives ``(index, None)``."""
        for attempt in range(MAX_UNREADABLE_IN_A_ROW if replace else 1):
            i = (index + attempt) % len(self.samples)
            try:
                return i, self.load_sample(i)
            except self.unreadable_errors as e:
                if not self.unreadable_flags[i]:  # named once per file, however often it is drawn
                    self.unreadable_flags[i] = True
                    logger.warning(self.skip_message, e)
        if not replace:
            return index, None
        raise DataError(f"{MAX_UNREADABLE_IN_A_ROW} unreadable samples in a row from {self.samples[index][0]}; "
                        "check the data folder (see the warnings above)")


def unreadable_files(dataset: Dataset, device: torch.device | str = "cpu") -> list[str]:
    """Distinct files of ``dataset`` found unreadable so far on any rank (a collective when
    distributed: call it on every rank). Sees through ``IndexedDataset`` and ``ConcatDataset``; data
    sets that do not track unreadable files contribute none."""
    inner = getattr(dataset, "dataset", dataset)
    parts = inner.datasets if isinstance(inner, ConcatDataset) else [inner]
    found: list[str] = []
    for part in parts:
        flags = getattr(part, "unreadable_flags", None)
        if flags is None:
            continue
        if dist.get_world_size() > 1:
            flags = dist.all_reduce_sum(flags.to(device=device, dtype=torch.int32)) > 0
        found += [part.samples[i][0] for i in flags.nonzero().flatten().tolist()]
    return found
