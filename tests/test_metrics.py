"""Metric functions against hand-computed cases (spec 5.3)."""
import numpy as np
import pytest

from fsvfm import metrics as M


def test_auc_and_balanced_acc_hand_computed():
    labels = [0, 0, 1, 1]
    scores = [0.2, 0.5, 0.5, 0.9]
    # pairs (fake, real): (.2,.5) win, (.2,.9) win, (.5,.5) tie = 1/2, (.5,.9) win -> 3.5 / 4
    assert M.frame_level_auc(labels, scores) == pytest.approx(87.5)
    preds = [0, 1, 0, 1]  # fake recall 1/2, real recall 1/2
    assert M.frame_level_acc(labels, preds) == pytest.approx(50.0)
    assert M.frame_level_balanced_acc([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(50.0)
    assert M.frame_level_acc([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(75.0)
    assert M.frame_level_balanced_acc([0, 0, 0, 1, 1], [0, 1, 0, 1, 0]) == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


@pytest.mark.parametrize("labels,scores,eer", [
    # ROC (0,0)-(0,.5)-(.5,1)-(1,1): TPR = .5 + x on [0,.5]; 1 - x = .5 + x -> x = .25
    ([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9], 0.25),
    # perfect separation
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.0),
    # fully reversed
    ([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2], 1.0),
    # one overlap: ROC (0,0)-(0,.75)-(.25,.75)-(.25,1)-(1,1): root at x = .25
    ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9], 0.25),
    # all tied: ROC is the diagonal, 1 - x = x
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
])
def test_brent_eer(labels, scores, eer):
    assert M.roc_eer(labels, scores) == pytest.approx(eer, abs=1e-9)


def test_video_grouping_first_seen_order_and_mean():
    names = ["b", "a", "b", "a", "c"]
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.2, 0.5, 0.4, 0.45]
    v_labels, v_scores, v_preds = M.get_video_level_label_pred(labels, names, scores)
    assert v_labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(v_scores, [0.7, 0.3, 0.45])
    assert v_preds.tolist() == [1, 0, 0]
    out = M.video_metrics(labels, scores, names)
    assert out["num_videos"] == 3
    assert out["balanced_acc"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert out["auc"] == pytest.approx(100.0)


def test_video_with_frames_of_both_classes_is_refused_and_frame_metrics_stay():
    with pytest.raises(M.VideoGroupingError, match="1 video\\(s\\) hold frames of both classes, e.g. 'v'"):
        M.get_video_level_label_pred([0, 1], ["v", "v"], [0.1, 0.9])
    test = M.ScoredSet(np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.1, 0.6]), np.array([0, 1, 0, 1]),
                       ["v", "v", "w", "w"])
    metrics = M.frame_and_video_level(test)
    assert metrics["frame"]["auc"] == 100.0 and metrics["frame"]["acc"] == 100.0
    assert list(metrics["video"]) == ["error"]
    assert "2 video(s) hold frames of both classes" in metrics["video"]["error"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="length mismatch"):
        M.get_video_level_label_pred([0, 1], ["a"], [0.1, 0.2])


@pytest.mark.parametrize("fn", [M.frame_level_auc, M.roc_eer, M.roc_points])
def test_one_class_is_a_clear_error(fn):
    with pytest.raises(M.OneClassError, match=r"all 3 labels are \[1\]"):
        fn([1, 1, 1], [0.1, 0.5, 0.9])


def test_metric_modes():
    labels, scores, preds = [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], [0, 1, 0, 1]
    names = ["f1", "f1", "r1", "r2"]
    test = M.ScoredSet(np.array(labels), np.array(scores), np.array(preds), names)
    image = M.METRIC_MODES["image"].compute(test, None)
    assert set(image) == {"frame"}
    assert image["frame"]["auc"] == pytest.approx(75.0)
    both = M.METRIC_MODES["video"].compute(test, None)
    assert set(both) == {"frame", "video"} and both["video"]["num_videos"] == 3
    assert both["video"]["auc"] == pytest.approx(100.0)  # f1: 0.35 < r1 0.4 < r2 0.9


def test_threshold_chosen_on_validation_applied_to_test():
    val = M.ScoredSet(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 0, 1]), list("abcd"))
    # at 0.4: FPR = 1/2 (0.4 accepted), FNR = 1/2 (0.35 rejected) -> the EER point
    assert M.roc_eer_threshold(val.labels, val.scores) == pytest.approx(0.4)
    test = M.ScoredSet(np.array([0, 0, 1, 1, 1]), np.array([0.3, 0.5, 0.45, 0.6, 0.9]), np.array([0, 1, 0, 1, 1]),
                       list("vwxyz"))
    mode = M.METRIC_MODES["image_val_threshold"]
    assert mode.needs_validation and not M.METRIC_MODES["video"].needs_validation
    frame = mode.compute(test, val)["frame"]
    # 0.5 (fake) accepted, 0.3 rejected; every real accepted -> FAR 1/2, FRR 0, 4 of 5 right
    assert frame["val_threshold"] == pytest.approx(0.4)
    assert (frame["far_at_val_threshold"], frame["frr_at_val_threshold"]) == (0.5, 0.0)
    assert frame["hter_at_val_threshold"] == 0.25 and frame["acc_at_val_threshold"] == pytest.approx(80.0)
    assert frame["auc"] == pytest.approx(100 * 5 / 6)
    with pytest.raises(ValueError, match="needs validation predictions"):
        mode.compute(test, None)


def test_video_grouping_equals_a_reference_loop_bit_for_bit():
    rng = np.random.default_rng(0)
    names = [f"v{k}" for k in rng.integers(0, 40, 500)]
    labels = [int(n[1:]) % 2 for n in names]
    scores = rng.random(500).astype(np.float32)
    seen: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        seen.setdefault(n, []).append(i)
    ref64 = [sum(float(scores[i]) for i in idx) / len(idx) for idx in seen.values()]
    ref32 = [np.mean(scores[idx]) for idx in seen.values()]
    v_labels, v64, _ = M.get_video_level_label_pred(labels, names, scores)
    _, v32, _ = M.get_video_level_label_pred(labels, names, scores, np.float32)
    assert v_labels.tolist() == [labels[idx[0]] for idx in seen.values()]
    assert v64.tolist() == ref64 and v32.dtype == np.float32 and v32.tolist() == [float(x) for x in ref32]
    empty = M.get_video_level_label_pred([], [], [])
    assert [len(a) for a in empty] == [0, 0, 0]
