"""FAS metrics (spec 6.6): vectorised versions equal plain loops over the definitions, ties included."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from fsvfm.metrics import (
    METRIC_MODES,
    OneClassError,
    ScoredSet,
    VideoGroupingError,
    fas_acc_at,
    fas_eer_states,
    fas_hter_at,
    fas_metrics,
    get_video_level_label_pred,
    tpr_at_fpr,
)


# --- plain-loop reference of the spec's definitions -------------------------------------------
def _states(probs, labels, thr):
    tn = fn = fp = tp = 0
    for p, y in zip(probs, labels):
        real = p >= thr
        tp += int(y == 1 and real)
        fn += int(y == 1 and not real)
        fp += int(y == 0 and real)
        tn += int(y == 0 and not real)
    return tn, fn, fp, tp


def _far_frr(probs, labels, thr):
    tn, fn, fp, tp = _states(probs, labels, thr)
    if fn + tp == 0:
        return fp / float(fp + tn), 1.0
    if fp + tn == 0:
        return 1.0, fn / float(fn + tp)
    return fp / float(fp + tn), fn / float(fn + tp)


def ref_eer(probs, labels, grid=10000):
    thresholds = [0.0 + i * 1.0 / float(grid) for i in range(grid + 1)] + [1.1]
    min_dist, state, frrs, fars = 1.0, None, [], []
    for thr in thresholds:
        far, frr = _far_frr(probs, labels, thr)
        fars.append(far)
        frrs.append(frr)
        if math.fabs(frr - far) <= min_dist:
            min_dist, state = math.fabs(frr - far), (far, frr, thr)
    return (state[0] + state[1]) / 2.0, state[2], frrs, fars


def ref_hter(probs, labels, thr):
    return sum(_far_frr(probs, labels, thr)) / 2.0


def ref_acc(probs, labels, thr):
    tn, _, _, tp = _states(probs, labels, thr)
    return (tp + tn) / len(labels)


def ref_tpr(labels, probs, fpr=0.01):
    fprs, tprs, _ = roc_curve(labels, probs)
    best = 0.0
    for f, t in zip(fprs, tprs):
        if f <= fpr:
            best = t
    return best


def _random_with_ties(seed, n=60):
    rng = np.random.default_rng(seed)
    probs = rng.integers(0, 21, size=n) / 20.0        # many exact ties, values on the grid
    labels = rng.integers(0, 2, size=n)
    return probs.tolist(), labels.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_equals_plain_loops_with_ties(seed):
    probs, labels = _random_with_ties(seed)
    eer, thr, frrs, fars = fas_eer_states(probs, labels, grid_density=200)
    r_eer, r_thr, r_frrs, r_fars = ref_eer(probs, labels, grid=200)
    assert (eer, thr) == pytest.approx((r_eer, r_thr), abs=1e-9)
    assert len(frrs) == 202 and np.allclose(frrs, r_frrs, atol=1e-9, rtol=0) and np.allclose(fars, r_fars, atol=1e-9, rtol=0)
    for t in (0.0, 0.25, thr, 0.5, 0.55, 1.0, 1.1):
        assert fas_hter_at(probs, labels, t) == pytest.approx(ref_hter(probs, labels, t), abs=1e-9)
        assert fas_acc_at(probs, labels, t) == pytest.approx(ref_acc(probs, labels, t), abs=1e-9)
    assert tpr_at_fpr(labels, probs) == pytest.approx(ref_tpr(labels, probs), abs=1e-9)
    assert tpr_at_fpr(labels, probs, fpr=0.3) == pytest.approx(ref_tpr(labels, probs, 0.3), abs=1e-9)


def test_default_grid_on_continuous_scores():
    rng = np.random.default_rng(7)
    probs, labels = rng.random(40), rng.integers(0, 2, 40)
    eer, thr, _, _ = fas_eer_states(probs, labels)
    r_eer, r_thr, _, _ = ref_eer(probs.tolist(), labels.tolist())
    assert (eer, thr) == pytest.approx((r_eer, r_thr), abs=1e-9)


def test_hand_computed_values():
    probs, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    # |FRR - FAR| is 0 for thresholds in (0.35, 0.4]; the last of them is 0.4 (FAR = FRR = 0.5).
    eer, thr, frrs, fars = fas_eer_states(probs, labels)
    assert (eer, thr) == (0.5, 0.4)
    assert (frrs[0], fars[0], frrs[-1], fars[-1]) == (0.0, 1.0, 1.0, 0.0)
    assert fas_hter_at(probs, labels, 0.5) == 0.25      # FAR 0, FRR 0.5
    assert fas_acc_at(probs, labels, 0.5) == 0.75   # 3 of 4 right
    assert tpr_at_fpr(labels, probs) == 0.5                  # FPR 0 up to TPR 0.5


def test_degenerate_classes_follow_the_original():
    # no real samples: FRR = 1 everywhere; no fake samples: FAR = 1 everywhere
    assert fas_hter_at([0.2, 0.7], [0, 0], 0.5) == (0.5 + 1.0) / 2
    assert fas_hter_at([0.2, 0.7], [1, 1], 0.5) == (1.0 + 0.5) / 2
    with pytest.raises(OneClassError):
        tpr_at_fpr([1, 1], [0.2, 0.7])


def test_fas_mode_groups_videos_as_the_other_video_metrics():
    # frames of a video averaged (first-seen order); the video label is its frames' label
    test = ScoredSet(np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.4, 0.6, 0.8, 0.5]), np.zeros(5, int),
                     ["v3", "v1", "v3", "v1", "v0"])
    out = METRIC_MODES["fas"].compute(test, None)["fas"]
    assert out["num_videos"] == 3 and out["auc"] == 1.0  # videos: v3 0.4 (spoof), v1 0.6, v0 0.5 (live)
    mixed = ScoredSet(np.array([0, 1, 1, 0]), np.array([0.2, 0.4, 0.6, 0.8]), np.zeros(4, int), ["a", "a", "b", "c"])
    with pytest.raises(VideoGroupingError, match="1 video\\(s\\) hold frames of both classes, e.g. 'a'"):
        METRIC_MODES["fas"].compute(mixed, None)


def test_fas_video_means_are_float32_as_the_original():
    """Live video frames 0.1f, 0.3f: float64 mean 0.2000000067 > the spoof video's 0.2f, float32 mean == 0.2f (a tie)."""
    labels, names = np.array([1, 1, 0]), ["live", "live", "spoof"]
    scores = np.array([0.1, 0.3, 0.2], np.float32)
    _, means64, _ = get_video_level_label_pred(labels, names, scores)
    _, means32, _ = get_video_level_label_pred(labels, names, scores, np.float32)
    assert means64[0] > means64[1] and means32.dtype == np.float32 and means32[0] == means32[1] == np.float32(0.2)
    fas = METRIC_MODES["fas"].compute(ScoredSet(labels, scores, np.zeros(3, int), names), None)["fas"]
    assert fas["auc"] == 0.5  # the tie: one live and one spoof video with the same score


def test_fas_metrics_oracle_and_source_threshold():
    out = fas_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], source_threshold=0.5)
    assert out == {"auc": 0.75, "eer": 0.5, "threshold": 0.4, "hter": 0.5, "acc": 0.5, "tpr_at_fpr": 0.5,
                   "hter_src": 0.25, "acc_src": 0.75}
