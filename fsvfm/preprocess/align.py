"""The FAS aligned chip: ``extract_image_chips(frame, points, 224, 0.37)`` of the MTCNN tools.

A least-squares similarity (Umeyama) from the 5 landmarks to the mean face shape gives a scale and a
rotation angle; only those two are kept. The image is rotated by that angle and scaled about the
midpoint of the two eyes, which is then moved to ``(0.5 * size, 0.4 * size)``. Landmarks are
``(5, 2)`` image coordinates in MTCNN order: left eye, right eye, nose, left and right mouth corner.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# Mean face shape of the 5 landmarks, in units of the unpadded chip.
MEAN_FACE_X = (0.224152, 0.75610125, 0.490127, 0.254149, 0.726104)
MEAN_FACE_Y = (0.2119465, 0.2119465, 0.628106, 0.780233, 0.780233)
EYE_CENTRE = (0.5, 0.4)  # where the eye midpoint lands, as fractions of the chip size


def template_points(size: int, padding: float) -> np.ndarray:
    """(5, 2) target positions: ``(padding + m) / (2 * padding + 1) * size`` per coordinate."""
    shape = np.stack([MEAN_FACE_X, MEAN_FACE_Y], axis=1)
    return (padding + shape) / (2 * padding + 1) * size


def scale_and_angle(points: np.ndarray, size: int, padding: float) -> tuple[float, float]:
    """Scale and angle (degrees) of the least-squares similarity from ``points`` to the template."""
    tform = SimilarityTransform.from_estimate(np.asarray(points, np.float64), template_points(size, padding))
    if not tform:
        raise ValueError(f"degenerate landmarks, no similarity transform: {np.asarray(points).tolist()}")
    m = tform.params
    return float(math.hypot(m[0, 0], m[1, 0])), math.degrees(math.atan2(m[1, 0], m[0, 0]))


def chip_matrix(points: np.ndarray, size: int = 224, padding: float = 0.37) -> np.ndarray:
    """2x3 affine matrix of the chip: rotate/scale about the eye midpoint, then move it to EYE_CENTRE."""
    points = np.asarray(points, np.float64)
    scale, angle = scale_and_angle(points, size, padding)
    centre = (points[0] + points[1]) / 2.0
    # OpenCV's positive angle turns the other way in image coordinates, hence the minus sign.
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -angle, scale)
    matrix[:, 2] += np.array(EYE_CENTRE) * size - centre
    return matrix


def extract_image_chip(image: np.ndarray, points: np.ndarray, size: int = 224, padding: float = 0.37) -> np.ndarray:
    """The ``size x size`` aligned chip of ``image`` (H, W[, C]; any channel order, kept)."""
    return cv2.warpAffine(image, chip_matrix(points, size, padding), (size, size))


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]
