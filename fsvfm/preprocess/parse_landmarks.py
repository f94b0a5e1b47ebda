"""Offline face parser: LaPa-style maps drawn from dlib's 68 landmarks.

A geometric stand-in for FaRL when its weights are unavailable: good enough for CRFR-P masking
(which only needs where the eyes, brows, nose, mouth, skin and hair roughly are), not a
segmentation model. Regions, drawn in this order so later ones win:
hair (a band above the forehead), skin (jaw hull extended up to the forehead), brows, eyes, nose,
lips and inner mouth. Point indices follow the iBUG 68-point scheme; 17-21 and 36-41 lie on the
image's left, i.e. the subject's right (LaPa ``rb``/``re``).
"""
from __future__ import annotations

import cv2
import numpy as np

from fsvfm.preprocess.faces import FaceCropper
from fsvfm.preprocess.labels import LAPA

JAW, R_BROW, L_BROW = np.arange(0, 17), np.arange(17, 22), np.arange(22, 27)
NOSE, R_EYE, L_EYE = np.arange(27, 36), np.arange(36, 42), np.arange(42, 48)
UPPER_LIP = np.array([48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60])
LOWER_LIP = np.array([54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64])
INNER_MOUTH = np.arange(60, 68)
FOREHEAD = 0.40   # forehead height above the brows, in units of the nose-root-to-chin distance
HAIR = 0.30       # hair band height above the forehead, same unit


def _poly(m: np.ndarray, pts: np.ndarray, label: int, hull: bool = False) -> None:
    p = np.round(pts).astype(np.int32)
    if hull:
        p = cv2.convexHull(p)
    cv2.fillPoly(m, [p.reshape(-1, 1, 2)], int(label))


def draw_parsing(pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """LaPa label map (H, W) uint8 for one face given its (68, 2) landmarks and the (H, W) size."""
    m = np.zeros(size, dtype=np.uint8)
    up = pts[27] - pts[8]                                # chin -> nose root
    unit = float(np.linalg.norm(up)) or 1.0
    up = up / unit
    brows = pts[17:27]
    forehead = brows + up * FOREHEAD * unit
    crown = np.concatenate([pts[[0, 16]], forehead]) + up * HAIR * unit
    _poly(m, np.concatenate([pts[[0, 16]], forehead, crown]), LAPA["hair"], hull=True)
    _poly(m, np.concatenate([pts[JAW], forehead]), LAPA["face"], hull=True)
    thickness = max(2, int(round(0.06 * unit)))
    for idx, label in ((R_BROW, LAPA["rb"]), (L_BROW, LAPA["lb"])):
        cv2.polylines(m, [np.round(pts[idx]).astype(np.int32).reshape(-1, 1, 2)], False, int(label),
                      thickness)
    _poly(m, pts[R_EYE], LAPA["re"])
    _poly(m, pts[L_EYE], LAPA["le"])
    _poly(m, pts[NOSE], LAPA["nose"], hull=True)
    _poly(m, pts[UPPER_LIP], LAPA["ulip"])
    _poly(m, pts[LOWER_LIP], LAPA["llip"])
    _poly(m, pts[INNER_MOUTH], LAPA["imouth"])
    return m


class LandmarkParser:
    """Parsing backend ``landmarks``: dlib HOG detection + 68-point predictor + ``draw_parsing``."""

    name = "landmarks"

    def __init__(self, upsample: int = 1, face_select: str = "first"):
        self.faces = FaceCropper(upsample=upsample, face_select=face_select)

    def parse(self, rgb: np.ndarray, rect: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """(H, W) uint8 label map of the kept face, or None when no face is found.

        ``rect`` (left, top, right, bottom) skips detection when the caller already knows the face.
        """
        if rect is None:
            face = self.faces.select(self.faces.detect(rgb))
            if face is None:
                return None
            rect = face.rect
        return draw_parsing(self.faces.landmarks(rgb, rect), rgb.shape[:2])
