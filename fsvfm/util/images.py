"""Reading an image file as RGB, with every way a file can be unusable turned into one error.

Pillow raises ``OSError`` (missing, empty, truncated, unknown format), ``ValueError`` /
``SyntaxError`` / ``EOFError`` / ``struct.error`` / ``zlib.error`` (broken headers or streams) and
``Image.DecompressionBombError`` (a small file that decodes to more than twice
``Image.MAX_IMAGE_PIXELS``, about 179 megapixels; not an ``OSError``).

``SkipsUnreadable`` is the one skip-and-count policy of the pre-training and fine-tuning data sets;
``unreadable_files`` lists what they skipped.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from fsvfm.util import dist
from fsvfm.util.errors import DataError

logger = logging.getLogger(__name__)

MAX_UNREADABLE_IN_A_ROW = 50

UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully as an RGB PIL image; ``UnreadableImageError`` naming it otherwise."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UNREADABLE_IMAGE_ERRORS as e:
        raise UnreadableImageError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


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
