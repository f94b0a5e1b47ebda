"""Reading an image file as RGB, with every way a file can be unusable turned into one error.

Pillow raises ``OSError`` (missing, empty, truncated, unknown format), ``ValueError`` /
``SyntaxError`` / ``EOFError`` / ``struct.error`` / ``zlib.error`` (broken headers or streams) and
``Image.DecompressionBombError`` (a small file that decodes to more than twice
``Image.MAX_IMAGE_PIXELS``, about 179 megapixels; not an ``OSError``).
"""
from __future__ import annotations

import os
import struct
import zlib

from PIL import Image

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
