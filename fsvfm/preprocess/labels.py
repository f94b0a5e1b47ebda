"""LaPa label set, its colour table and the legend drawn from it.

The one colour table of the package: ``--save_vis`` maps, their legend and the figures of
``fsvfm.visualize`` all read it. Colours are BGR (OpenCV order, as the original wrote them);
``label_colours_rgb`` gives the same colours for RGB consumers such as matplotlib.
"""
from __future__ import annotations

import cv2
import numpy as np

LAPA_NAMES = ("background", "face", "rb", "lb", "re", "le", "nose", "ulip", "imouth", "llip", "hair")
LAPA = {name: i for i, name in enumerate(LAPA_NAMES)}
LAPA_MEANINGS = ("background", "facial skin", "right eyebrow", "left eyebrow", "right eye", "left eye",
                 "nose", "upper lip", "inner mouth", "lower lip", "hair")

# 24 colours, used by OpenCV as BGR when written (as in the original).
PALETTE = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 0, 85], [255, 0, 170], [0, 255, 0],
    [85, 255, 0], [170, 255, 0], [0, 255, 85], [0, 255, 170], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [0, 85, 255], [0, 170, 255], [255, 255, 0], [255, 255, 85], [255, 255, 170],
    [255, 0, 255], [255, 85, 255], [255, 170, 255], [0, 255, 255], [85, 255, 255], [170, 255, 255],
], dtype=np.uint8)
LEGEND_WIDTH = 150


def label_colours() -> np.ndarray:
    """(11, 3) uint8 BGR colour of each LaPa label: background white, label k the k-th palette colour."""
    colours = PALETTE[:len(LAPA_NAMES)].copy()
    colours[0] = 255
    return colours


def label_colours_rgb() -> np.ndarray:
    """(11, 3) uint8 RGB colours, i.e. how ``label_colours`` look once written by OpenCV."""
    return np.ascontiguousarray(label_colours()[:, ::-1])


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 BGR colour image; class 0 white, class k the k-th palette colour."""
    out = PALETTE[np.clip(label_map.astype(np.int64), 0, len(PALETTE) - 1)]
    out[label_map == 0] = 255
    return out


def legend_image(height: int, width: int = LEGEND_WIDTH) -> np.ndarray:
    """(height, width, 3) uint8 BGR legend on white: one row per LaPa label, ``swatch  index meaning``."""
    img = np.full((height, width, 3), 255, np.uint8)
    row = height / len(LAPA_NAMES)
    side = max(int(row * 0.7), 3)
    scale = max(min(row / 28.0, width / 330.0), 0.25)
    for k, (meaning, colour) in enumerate(zip(LAPA_MEANINGS, label_colours())):
        top = int(k * row + (row - side) / 2)
        cv2.rectangle(img, (4, top), (4 + side, top + side), colour.tolist(), -1)
        cv2.rectangle(img, (4, top), (4 + side, top + side), (80, 80, 80), 1)
        cv2.putText(img, f"{k} {meaning}", (10 + side, top + side - 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return img


def with_legend(bgr: np.ndarray) -> np.ndarray:
    """``bgr`` (H, W, 3) with the label legend appended on its right: (H, W + LEGEND_WIDTH, 3)."""
    return np.concatenate([bgr, legend_image(bgr.shape[0])], axis=1)
