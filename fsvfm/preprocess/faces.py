"""dlib face detection, the square x1.3 box, unaligned and aligned crops.

Images are NumPy arrays: ``rgb`` means HxWx3 uint8 in RGB order, ``bgr`` the OpenCV order.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

logger = logging.getLogger(__name__)

# ArcFace 112x112 five-point template (left eye, right eye, nose tip, left and right mouth corner,
# in image coordinates); the original shifts it by +8 in x before scaling it to the output size.
ARCFACE_TEMPLATE_112 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                                 [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float64)
FACE_SELECT = ("first", "largest")
# A face crop's dlib box spans about 1/1.3 of its side; a photo's faces span far less.
MIN_FACE_SHARE = 0.35
# Boxes at least this fraction of the largest one count as further faces (smaller ones: false positives).
SIMILAR_FACE = 0.5
CHECK_SIDES = (224, 2048)   # the crop check detects on the image scaled to a longer side in this range
# dlib's frontal detector: 80x80 windows scanned over a pyramid shrinking by 5/6 a level (after x2 per upsample)
HOG_WINDOW, PYRAMID_RATE = 80, 6
# A video's faces keep their size between sampled frames: the next frame is searched for faces down to this
# share of the smallest face found in the previous one (the pyramid levels for smaller faces are skipped).
TRACK_SHRINK = 0.7


def landmark_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Path of a dlib model shipped by ``face-recognition-models``.

    The package is located without importing it: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer ship.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package face-recognition-models is not installed "
                                "(pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"dlib model missing: {path}")
    return path


def square_box(rect: tuple[int, int, int, int], width: int, height: int,
               scale: float = 1.3) -> tuple[int, int, int]:
    """The original's enlarged square box: ``(x1, y1, size)`` of the crop ``[y1:y1+size, x1:x1+size]``.

    ``rect`` is dlib's (left, top, right, bottom). Overflow on the left/top shifts the box (size kept),
    overflow on the right/bottom shrinks it, so the crop is always square.
    """
    left, top, right, bottom = rect
    size = int(max(right - left, bottom - top) * scale)
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x1 = max(int(cx - size // 2), 0)
    y1 = max(int(cy - size // 2), 0)
    size = min(width - x1, size)
    size = min(height - y1, size)
    return x1, y1, size


def square_crop(image: np.ndarray, rect: tuple[int, int, int, int],
                scale: float = 1.3) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The enlarged square crop of a face (``square_box``) from an HxWxC image of any channel order,
    with its ``(x1, y1, size)``; None when the box is empty."""
    x1, y1, size = square_box(rect, image.shape[1], image.shape[0], scale)
    if size <= 0:
        return None
    return image[y1:y1 + size, x1:x1 + size].copy(), (x1, y1, size)


def rect_tuple(rect: dlib.rectangle) -> tuple[int, int, int, int]:
    return rect.left(), rect.top(), rect.right(), rect.bottom()


def five_points(pts: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip and mouth corners from dlib's (68, 2) landmarks, template order."""
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def alignment_matrix(points: np.ndarray, out_size: int) -> np.ndarray:
    """2x3 similarity transform taking ``points`` (5, 2) onto the shifted, rescaled template."""
    template = (ARCFACE_TEMPLATE_112 + np.array([8.0, 0.0])) * (out_size / 112.0)
    matrix, _ = cv2.estimateAffinePartial2D(points.astype(np.float32), template.astype(np.float32),
                                            method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("degenerate landmarks: no similarity transform")
    return matrix


def face_side(face: Face) -> int:
    """The longer side of a face box, in pixels."""
    return max(face.rect[2] - face.rect[0], face.rect[3] - face.rect[1])


def smallest_side(faces: list[Face]) -> int | None:
    """Longer side of the smallest face box (the next video frame's search floor), None without faces."""
    return min(map(face_side, faces), default=None)


def skipped_levels(upsample: int, min_side: float | None) -> int:
    """Pyramid levels of an ``upsample`` search that only find faces narrower than ``min_side`` pixels."""
    if not min_side or min_side <= 0:
        return 0
    # level k scales the image by 2**upsample * (5/6)**k; a face is found where it is about window-sized
    ratio = 2.0 ** upsample * min_side / HOG_WINDOW
    return max(0, math.floor(math.log(ratio) / math.log(PYRAMID_RATE / (PYRAMID_RATE - 1)))) if ratio > 1 else 0


def pyramid_level(rgb: np.ndarray, upsample: int, level: int):
    """Level ``level`` of dlib's search pyramid of ``rgb`` (its x2 upsampling, then 5/6 steps), and the
    function taking a ``dlib.rectangle`` found on it back to ``rgb``'s coordinates."""
    up, down6 = dlib.pyramid_down(2), dlib.pyramid_down(PYRAMID_RATE)
    img = rgb
    for _ in range(upsample):   # dlib's pyramid_up: its bilinear resize to the size rect_up gives
        r = up.rect_up(dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1))
        img = np.asarray(dlib.resize_image(np.ascontiguousarray(img), r.bottom() + 1, r.right() + 1))
    for _ in range(level):
        img = down6(img)

    def back(rect: dlib.rectangle) -> dlib.rectangle:
        for _ in range(level):
            rect = down6.rect_up(rect)
        for _ in range(upsample):
            rect = up.rect_down(rect)
        return rect
    return np.ascontiguousarray(img), back


def crop_problem(faces: list[Face], width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` whose detected faces are ``faces`` is not a face crop (no
    face, several faces of similar size, or one far smaller than the frame), or None when it is one."""
    if not faces:
        return "no face found"
    sides = sorted((max(f.rect[2] - f.rect[0], f.rect[3] - f.rect[1]) for f in faces), reverse=True)
    similar = sum(side >= SIMILAR_FACE * sides[0] for side in sides)
    if similar > 1:
        return f"{len(faces)} faces"
    share = sides[0] / min(width, height)
    if share < MIN_FACE_SHARE:
        return f"its face spans {share:.0%} of the frame, a face crop's about 75%"
    return None


@dataclass
class Face:
    """One detected face: dlib rectangle (left, top, right, bottom) and detector score."""
    rect: tuple[int, int, int, int]
    score: float


class FaceCropper:
    """Detect the face of a frame and cut the enlarged square crop (or an aligned one).

    Models are created once per instance; make one instance per worker process.
    """

    def __init__(self, face_scale: float = 1.3, upsample: int = 1, face_select: str = "first",
                 align: bool = False, face_size: int = 224, verify_aligned: bool = True):
        if face_select not in FACE_SELECT:
            raise ValueError(f"face_select must be one of {FACE_SELECT}, got {face_select!r}")
        self.face_scale, self.upsample, self.face_select = face_scale, upsample, face_select
        self.align, self.face_size, self.verify_aligned = align, face_size, verify_aligned
        self.detector = dlib.get_frontal_face_detector()
        self._predictor: dlib.shape_predictor | None = None

    @property
    def predictor(self) -> dlib.shape_predictor:
        if self._predictor is None:
            self._predictor = dlib.shape_predictor(str(landmark_model_path()))
        return self._predictor

    def detect(self, rgb: np.ndarray, upsample: int | None = None, min_side: float | None = None) -> list[Face]:
        """All faces in dlib's order (highest score first).

        ``min_side`` (pixels): skip the pyramid levels that only find faces smaller than that, and return
        only faces at least that wide. The levels kept are built with dlib's own resampling, so those
        faces are the full search's (boxes within a pixel or two of dlib's rounding, same scores); the
        skipped levels hold most of the cost.
        """
        upsample = self.upsample if upsample is None else upsample
        skip = skipped_levels(upsample, min_side)
        if skip == 0:
            rects, scores, _ = self.detector.run(rgb, upsample, 0.0)
            return [Face(rect_tuple(r), float(s)) for r, s in zip(rects, scores)]
        level, down = pyramid_level(rgb, upsample, skip)
        rects, scores, _ = self.detector.run(level, 0, 0.0)
        faces = [Face(rect_tuple(down(r)), float(s)) for r, s in zip(rects, scores)]
        # a smaller face can still show up on the coarse levels, with a looser box than the full search's
        return [f for f in faces if face_side(f) >= min_side]

    def detect_tracked(self, rgb: np.ndarray, prev_side: float | None) -> list[Face]:
        """``detect`` of a video frame given the smallest face side of the previous sampled frame: only
        faces down to ``TRACK_SHRINK`` of it are searched, and the whole search runs when none is found
        (a cut, a face leaving) or there is no previous face."""
        if prev_side:
            faces = self.detect(rgb, min_side=prev_side * TRACK_SHRINK)
            if faces:
                return faces
        return self.detect(rgb)

    def crop_problem(self, rgb: np.ndarray) -> str | None:
        """``crop_problem`` of an RGB image, detected at a longer side within ``CHECK_SIDES``."""
        h, w = rgb.shape[:2]
        scale = min(max(1.0, CHECK_SIDES[0] / max(h, w)), CHECK_SIDES[1] / max(h, w))
        if scale != 1.0:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        return crop_problem(self.detect(np.ascontiguousarray(rgb)), rgb.shape[1], rgb.shape[0])

    def ranked(self, faces: list[Face]) -> list[Face]:
        """Faces in the order ``face_select`` prefers: dlib's score order, or largest box first."""
        if self.face_select == "largest":
            return sorted(faces, key=lambda f: -(f.rect[2] - f.rect[0]) * (f.rect[3] - f.rect[1]))
        return list(faces)

    def select(self, faces: list[Face]) -> Face | None:
        ranked = self.ranked(faces)
        return ranked[0] if ranked else None

    def landmarks(self, rgb: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        """(68, 2) landmark coordinates inside ``rect``."""
        shape = self.predictor(rgb, dlib.rectangle(*rect))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def crop(self, bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """Return ``(crop_bgr, face_rect_in_crop)`` of the selected face, or None when no face is kept.

        Unaligned: native-size square crop. Aligned: ``face_size`` square warped onto the template,
        kept only if dlib finds a face in it again (as the original intended).
        """
        crops = self.crops(bgr, 1)
        return crops[0] if crops else None

    def crops(self, bgr: np.ndarray, max_faces: int = 1, faces: list[Face] | None = None,
              rgb: np.ndarray | None = None) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        """``crop`` for the first ``max_faces`` faces in ``face_select`` order (0 = every face), of the
        faces ``detect`` finds or of those given; ``rgb``: ``bgr`` in RGB when the caller has it already.

        Faces whose crop is empty or fails the aligned re-detection are dropped, not replaced.
        """
        rgb = np.ascontiguousarray(bgr[:, :, ::-1]) if rgb is None else rgb
        faces = self.ranked(self.detect(rgb) if faces is None else faces)
        out = []
        for face in faces[:max_faces] if max_faces > 0 else faces:
            res = self._aligned(bgr, rgb, face) if self.align else self._unaligned(bgr, face)
            if res is not None:
                out.append(res)
        return out

    def _unaligned(self, bgr: np.ndarray, face: Face):
        cut = square_crop(bgr, face.rect, self.face_scale)
        if cut is None:
            return None
        (x1, y1, _), (left, top, right, bottom) = cut[1], face.rect
        return cut[0], (left - x1, top - y1, right - x1, bottom - y1)

    def _aligned(self, bgr: np.ndarray, rgb: np.ndarray, face: Face):
        pts = self.landmarks(rgb, face.rect)
        matrix = alignment_matrix(five_points(pts), self.face_size)
        out = cv2.warpAffine(bgr, matrix, (self.face_size, self.face_size), flags=cv2.INTER_CUBIC)
        corners = np.array([[face.rect[0], face.rect[1], 1], [face.rect[2], face.rect[3], 1]], float)
        rect = tuple(int(v) for v in (corners @ matrix.T).round().ravel())
        if self.verify_aligned:
            again = self.detect(np.ascontiguousarray(out[:, :, ::-1]), upsample=1)
            if not again:
                return None
            rect = self.select(again).rect
        return out, rect
