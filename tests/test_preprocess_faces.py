"""dlib detection counts, the square x1.3 box arithmetic, crop sizes, face selection, alignment."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fsvfm.preprocess.faces import (
    ARCFACE_TEMPLATE_112,
    Face,
    FaceCropper,
    alignment_matrix,
    skipped_levels,
    smallest_side,
    square_box,
)
from tests.helpers import astronaut_bgr, faces_dir

# dlib HOG, upsample 1 (see shared/faces/README.md): faces per photo.
EXPECTED_COUNTS = {
    "2007_007763.jpg": 7, "2008_001009.jpg": 2, "2008_001322.jpg": 3, "2008_002079.jpg": 6,
    "2008_002470.jpg": 6, "2008_002506.jpg": 3, "2008_004176.jpg": 7, "2008_007676.jpg": 7,
    "2009_004587.jpg": 2, "Tom_Cruise_avp_2014_4.jpg": 1, "dogs.jpg": 0, "bald_guys.jpg": 24,
}


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper()


@pytest.mark.parametrize("name,count", sorted(EXPECTED_COUNTS.items()))
def test_detection_counts_on_shared_faces(cropper, name, count):
    bgr = cv2.imread(str(faces_dir() / name))
    faces = cropper.detect(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert len(faces) == count
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_astronaut_first_is_highest_score_largest_is_by_area(cropper):
    faces = cropper.detect(np.ascontiguousarray(astronaut_bgr()[:, :, ::-1]))
    assert [f.rect for f in faces] == [(175, 76, 265, 166), (126, 335, 215, 425)]
    assert faces[0].score > 1.0 > 0.2 > faces[1].score      # the patch scores 0.12 against 1.16
    assert cropper.select(faces).rect == (175, 76, 265, 166)
    largest = FaceCropper(face_select="largest")
    assert largest.select(faces).rect == (175, 76, 265, 166)      # 90x90 beats 89x90
    with pytest.raises(ValueError):
        FaceCropper(face_select="biggest")


@pytest.mark.parametrize("rect,w,h,expected", [
    # interior: S = int(100*1.3) = 130, centre (150, 150), x1 = y1 = 150 - 65 = 85
    ((100, 100, 200, 200), 400, 400, (85, 85, 130)),
    # odd sizes: S = int(91*1.3) = 118, cx = (175+265)//2 = 220, cy = (76+167)//2 = 121
    ((175, 76, 265, 167), 512, 512, (161, 62, 118)),
    # left border: cx - S//2 = 30 - 65 < 0 -> x1 = 0, size kept
    ((-20, 100, 80, 200), 400, 400, (0, 85, 130)),
    # top border: y1 clipped to 0, size kept
    ((100, -40, 200, 60), 400, 400, (85, 0, 130)),
    # right border: x1 = 300 - 65 = 235, S = min(260 - 235, 130) = 25
    ((250, 100, 350, 200), 260, 400, (235, 85, 25)),
    # bottom border: y1 = 235, S = min(300 - 235, 130) = 65
    ((100, 250, 200, 350), 400, 300, (85, 235, 65)),
    # face_scale applies to the longer side: max(60, 100) * 1.3 = 130
    ((100, 100, 160, 200), 400, 400, (65, 85, 130)),
])
def test_square_box_hand_worked(rect, w, h, expected):
    assert square_box(rect, w, h, 1.3) == expected


def test_unaligned_crop_native_size(cropper):
    crop, rect = cropper.crop(astronaut_bgr())
    # face (175, 76, 265, 166): S = int(90 * 1.3) = 117, centre (220, 121) -> x1 = 162, y1 = 63
    assert crop.shape == (117, 117, 3)
    assert np.array_equal(crop, astronaut_bgr()[63:180, 162:279])
    assert rect == (13, 13, 103, 103)


def test_crop_sizes_on_shared_faces(cropper):
    bgr = cv2.imread(str(faces_dir() / "Tom_Cruise_avp_2014_4.jpg"))
    crop, rect = cropper.crop(bgr)
    assert cropper.detect(np.ascontiguousarray(bgr[:, :, ::-1]))[0].rect == (76, 290, 461, 675)
    # S = int(385 * 1.3) = 500, centre (268, 482) -> (18, 232); 565 - 18 and 800 - 232 both exceed 500
    assert crop.shape == (500, 500, 3)
    assert np.array_equal(crop, bgr[232:732, 18:518]) and rect == (58, 58, 443, 443)
    assert cropper.crop(cv2.imread(str(faces_dir() / "dogs.jpg"))) is None


def test_aligned_crop_maps_landmarks_to_template():
    aligned = FaceCropper(align=True, face_size=224)
    crop, rect = aligned.crop(astronaut_bgr())
    assert crop.shape == (224, 224, 3)
    template = (ARCFACE_TEMPLATE_112 + [8, 0]) * 2.0
    # a pure similarity fitted to exact template points reproduces the template
    m = alignment_matrix(template * 0.5 + 10, 224)
    mapped = np.c_[template * 0.5 + 10, np.ones(5)] @ m.T
    assert np.allclose(mapped, template, atol=1e-3)
    # and dlib finds the re-detected face in the middle of the aligned crop
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    assert abs(cx - 112) < 30 and abs(cy - 112) < 40


def _rect_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return ix * iy / (area(a) + area(b) - ix * iy)


def test_skipped_levels_hand_worked():
    # upsample 1: level k scales by 2 * (5/6)**k; 150 px faces are window-sized (80 px) near k = log(3.75)/log(1.2) = 7.25
    assert skipped_levels(1, 150) == 7
    assert skipped_levels(0, 150) == 3            # log(1.875)/log(1.2) = 3.45
    assert skipped_levels(1, 40) == 0 and skipped_levels(1, None) == 0 and skipped_levels(1, 30) == 0
    assert smallest_side([]) is None
    assert smallest_side([Face((0, 0, 50, 60), 1.0), Face((0, 0, 90, 80), 2.0)]) == 60


@pytest.mark.parametrize("min_side", [60, 150])
def test_level_skipped_search_finds_the_full_searchs_faces(cropper, min_side):
    """Every face the full search finds at least ``min_side`` wide is found again from the skipped level:
    same score (the levels are dlib's own), box within dlib's rounding; no face the full search lacks."""
    matched = 0
    for name in sorted(EXPECTED_COUNTS):
        rgb = np.ascontiguousarray(cv2.imread(str(faces_dir() / name))[:, :, ::-1])
        full, skipped = cropper.detect(rgb), cropper.detect(rgb, min_side=min_side)
        for f in full:
            if max(f.rect[2] - f.rect[0], f.rect[3] - f.rect[1]) < min_side:
                continue
            best = max(skipped, key=lambda g: _rect_iou(f.rect, g.rect))
            assert _rect_iou(f.rect, best.rect) >= 0.95 and abs(best.score - f.score) < 1e-6, (name, f, best)
            matched += 1
        assert all(max(_rect_iou(g.rect, f.rect) for f in full) >= 0.95 for g in skipped), name
        assert len(skipped) == sum(max(f.rect[2] - f.rect[0], f.rect[3] - f.rect[1]) >= min_side for f in full), name
    assert matched == {60: 35, 150: 19}[min_side]          # faces of the 12 photos at least that wide


def test_tracked_search_falls_back_to_the_full_search(cropper):
    rgb = np.ascontiguousarray(cv2.imread(str(faces_dir() / "Tom_Cruise_avp_2014_4.jpg"))[:, :, ::-1])
    (full,) = cropper.detect(rgb)
    # a previous face far larger than any here: the skipped levels find nothing, the full search runs
    assert cropper.detect(rgb, min_side=2000) == []
    assert cropper.detect_tracked(rgb, 2000) == [full]
    assert cropper.detect_tracked(rgb, None) == [full]
    (near,) = cropper.detect_tracked(rgb, 380)
    assert _rect_iou(near.rect, full.rect) >= 0.95
