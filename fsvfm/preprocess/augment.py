"""Varied copies of a photo (scale, shift, rotation, colour), e.g. to grow a demo data set."""
from __future__ import annotations

import cv2
import numpy as np


def random_affine(rng: np.random.Generator, width: int, height: int, max_scale: float = 0.15,
                  max_shift: float = 0.08, max_angle: float = 15.0) -> np.ndarray:
    """2x3 matrix: rotation and scaling about the centre, then a shift (fractions of the size)."""
    angle = rng.uniform(-max_angle, max_angle)
    scale = rng.uniform(1 - max_scale, 1 + max_scale)
    m = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    m[:, 2] += rng.uniform(-max_shift, max_shift, 2) * (width, height)
    return m


def jitter_colour(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Brightness, contrast and saturation factors in [1-strength, 1+strength], hue shift +-8 deg."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180         # OpenCV hue unit = 2 degrees
    hsv[..., 1] *= rng.uniform(1 - strength, 1 + strength)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - strength, 1 + strength) + mean * rng.uniform(1 - strength, 1 + strength)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_variants(img: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` randomly transformed copies of an (H, W, 3) uint8 RGB image, same size, reproducible
    for a given ``seed``. Borders are reflected so no black corners give the copies away."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        warped = cv2.warpAffine(img, random_affine(rng, w, h), (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        out.append(jitter_colour(warped, rng))
    return out
