"""MTCNN face detection with the weights shipped inside the ``facenet-pytorch`` wheel.

Settings of the original (an MXNet port of the same networks): thresholds 0.6/0.7/0.8 (those of the
port's version the original's crop function comes from), minimum face size 20, scale factor 0.709; the first (most confident) detection is kept. Nothing is downloaded:
``pnet.pt``, ``rnet.pt`` and ``onet.pt`` are files of the installed package.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

THRESHOLDS = (0.6, 0.7, 0.8)  # P-, R-, O-Net
MIN_FACE_SIZE = 20
FACTOR = 0.709


@dataclass
class Detection:
    """One face: box (x1, y1, x2, y2), confidence, and (5, 2) landmarks (eyes, nose, mouth corners)."""
    box: np.ndarray
    prob: float
    points: np.ndarray

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


class MTCNNDetector:
    """Wrapper of ``facenet_pytorch.MTCNN``; make one per worker process (the networks load once)."""

    def __init__(self, device: str | None = None, face_select: str = "first"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise ImportError("FAS preprocessing needs facenet-pytorch: "
                              "pip install --no-deps facenet-pytorch") from e
        self.face_select = face_select
        self.mtcnn = MTCNN(min_face_size=MIN_FACE_SIZE, thresholds=list(THRESHOLDS), factor=FACTOR,
                           keep_all=True, select_largest=False, post_process=False, device=device or "cpu")

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces of an RGB uint8 (H, W, 3) image, most confident first."""
        boxes, probs, points = self.mtcnn.detect(np.ascontiguousarray(rgb), landmarks=True)
        if boxes is None:
            return []
        faces = [Detection(np.asarray(b, np.float64), float(p), np.asarray(q, np.float64))
                 for b, p, q in zip(boxes, probs, points)]
        return sorted(faces, key=lambda f: -f.prob)

    def ranked(self, rgb: np.ndarray) -> list[Detection]:
        """All faces in ``face_select`` order: most confident first (original), or largest first."""
        faces = self.detect(rgb)
        return sorted(faces, key=lambda f: -f.area) if self.face_select == "largest" else faces

    def select(self, rgb: np.ndarray) -> Detection | None:
        """The kept face: the most confident (original) or, with ``face_select='largest'``, the largest."""
        faces = self.ranked(rgb)
        return faces[0] if faces else None
