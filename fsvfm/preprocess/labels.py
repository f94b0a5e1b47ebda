"""LaPa label set (spec 2.2) and the visualisation palette (spec 2.3)."""
from __future__ import annotations

import numpy as np

LAPA_NAMES = ("background", "face", "rb", "lb", "re", "le", "nose", "ulip", "imouth", "llip", "hair")
LAPA = {name: i for i, name in enumerate(LAPA_NAMES)}

# 24 colours, used by OpenCV as BGR when written (as in the original).
PALETTE = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 0, 85], [255, 0, 170], [0, 255, 0],
    [85, 255, 0], [170, 255, 0], [0, 255, 85], [0, 255, 170], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [0, 85, 255], [0, 170, 255], [255, 255, 0], [255, 255, 85], [255, 255, 170],
    [255, 0, 255], [255, 85, 255], [255, 170, 255], [0, 255, 255], [85, 255, 255], [170, 255, 255],
], dtype=np.uint8)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colour image; class 0 white, class k the k-th palette colour."""
    out = PALETTE[np.clip(label_map.astype(np.int64), 0, len(PALETTE) - 1)]
    out[label_map == 0] = 255
    return out
