"""Detection metrics, computed once on the full set of predictions: binary, FAS and N-class
(``multiclass_metrics``). Names say the protocol: ``roc_*`` is the DfD/DiFF one (sklearn's ROC curve, EER by
Brent root), ``fas_*`` the FAS one (a grid of 10,002 thresholds, FAR/FRR/HTER as SSDG defines them).

Conventions: label 1 = real = positive class; ``scores`` = P(real); ACC/AUC in percent, EER as a
fraction in [0, 1]. Video level: frames are grouped by video name in first-seen order, the video
score is the mean frame score, the video label that of its first frame, the decision ``score >= 0.5``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from fsvfm.util.errors import DataError


class OneClassError(DataError):
    """AUC/EER are undefined because the labels contain a single class."""


class VideoGroupingError(DataError):
    """Frames grouped into one video carry different labels (the grouping key merges videos)."""


def _check_binary(labels: np.ndarray, what: str) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise OneClassError(f"{what} is undefined: all {len(labels)} labels are {present.tolist()} "
                            "(need both fake=0 and real=1 samples in the evaluated set)")


def frame_level_acc(labels: Sequence[int], preds: Sequence[int]) -> float:
    return float(accuracy_score(labels, preds) * 100)


def frame_level_balanced_acc(labels: Sequence[int], preds: Sequence[int]) -> float:
    return float(balanced_accuracy_score(labels, preds) * 100)


def frame_level_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    labels = np.asarray(labels)
    _check_binary(labels, "AUC")
    return float(roc_auc_score(labels, np.asarray(scores)) * 100)


def roc_eer(labels: Sequence[int], scores: Sequence[float]) -> float:
    """FPR where FPR = FNR: Brent root of ``1 - x - TPR(x)`` on [0, 1], TPR linearly interpolated."""
    labels = np.asarray(labels)
    _check_binary(labels, "EER")
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores), pos_label=1)
    tpr_at = interp1d(fpr, tpr)
    return float(brentq(lambda x: 1.0 - x - tpr_at(x), 0.0, 1.0))


def get_video_level_label_pred(frame_labels: Sequence[int], video_names: Sequence[str],
                               frame_scores: Sequence[float], dtype: type | None = None
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group frames by video (first-seen order) -> (video labels, mean scores, ``score >= 0.5``).
    ``dtype=np.float32``: each video's mean is taken in float32 (``np.mean`` of its float32 scores, as the
    original FAS evaluation does; ties it makes move the EER/HTER). A video whose frames carry different
    labels is a ``VideoGroupingError`` naming it."""
    if not len(frame_labels) == len(video_names) == len(frame_scores):
        raise ValueError(f"length mismatch: {len(frame_labels)} labels, {len(video_names)} names, "
                         f"{len(frame_scores)} scores")
    names = np.asarray([str(n) for n in video_names])
    _, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    index = rank[inverse.reshape(-1)]                     # video id of each frame, in first-seen order
    labels = np.asarray(frame_labels).astype(np.int64).reshape(-1)
    first_label = labels[np.sort(first)]
    mixed = np.flatnonzero(labels != first_label[index])
    if len(mixed):
        count_mixed = len(np.unique(index[mixed]))
        raise VideoGroupingError(f"{count_mixed} video(s) hold frames of both classes, e.g. {str(names[mixed[0]])!r}: "
                                 "frames of different videos share a name; give each video a distinct name")
    counts = np.bincount(index, minlength=len(first))
    scores = np.bincount(index, weights=np.asarray(frame_scores, np.float64), minlength=len(first)) / counts
    if dtype is not None and len(counts):                 # per-video np.mean in dtype, frames in their order
        frames = np.asarray(frame_scores, dtype)[np.argsort(index, kind="stable")]
        scores = np.asarray([np.mean(g) for g in np.split(frames, np.cumsum(counts)[:-1])], dtype)
    return first_label, scores, (scores >= 0.5).astype(int)


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve with real (1) as the positive class."""
    _check_binary(np.asarray(labels), "ROC")
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores), pos_label=1)
    return fpr, tpr


def binary_metrics(labels: Sequence[int], scores: Sequence[float], preds: Sequence[int]) -> dict[str, float]:
    """ACC, balanced ACC, AUC (percent) and EER (fraction) of one set of per-sample predictions."""
    return {"acc": frame_level_acc(labels, preds), "balanced_acc": frame_level_balanced_acc(labels, preds),
            "auc": frame_level_auc(labels, scores), "eer": roc_eer(labels, scores)}


def video_metrics(labels: Sequence[int], scores: Sequence[float], video_names: Sequence[str]) -> dict[str, float]:
    """Video-level balanced ACC, AUC, EER (video plain ACC is reported too, for completeness)."""
    v_labels, v_scores, v_preds = get_video_level_label_pred(labels, video_names, scores)
    return {"num_videos": len(v_labels), **binary_metrics(v_labels, v_scores, v_preds)}


def roc_eer_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The score threshold where FAR (fakes accepted) and FRR (reals rejected) are closest; a sample
    is called real when ``score >= threshold``."""
    labels = np.asarray(labels)
    _check_binary(labels, "the EER threshold")
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores), pos_label=1, drop_intermediate=False)
    i = int(np.argmin(np.abs((1.0 - tpr) - fpr)))
    return float(min(thresholds[i], 1.0))


def rates_at(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    """FAR, FRR and HTER = (FAR + FRR) / 2 (fractions) and ACC (percent) when ``score >= threshold``
    means real (the FAS definitions below: a class absent from ``labels`` has rate 1)."""
    probs, labels = _fas_inputs(scores, labels)
    far, frr, acc = (float(v[0]) for v in _far_frr(probs, labels, np.array([threshold], np.float64)))
    return {"far": far, "frr": frr, "hter": (far + frr) / 2, "acc": acc * 100}


@dataclass(frozen=True)
class ScoredSet:
    """Per-sample predictions of one set: ``labels`` [N] (1 = positive), ``scores`` [N] = P(positive),
    ``preds`` [N] = argmax decisions, ``names`` [N] = video of each sample (grouping key); ``probs``
    [N, C] every class's probability and ``classes`` [C] their names (multi-class metrics)."""

    labels: np.ndarray
    scores: np.ndarray
    preds: np.ndarray
    names: Sequence[str]
    probs: np.ndarray | None = None
    classes: Sequence[str] = ()


def multiclass_metrics(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """N-class figures of per-sample ``probs`` [N, C] (rows sum to 1) and ``labels`` [N] in 0..C-1:
    ``acc`` and ``balanced_acc`` (percent) of the argmax, per class one-vs-rest ``auc`` (percent; None
    when the class is absent, or is the only one present), ``macro_auc`` = ``auc`` = the mean of the
    defined ones, ``confusion_matrix`` [C][C] (rows: true class, columns: predicted), per class
    ``num_samples`` and ``recall``."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(labels) != len(probs):
        raise ValueError(f"expected probs [N, {len(classes)}] for {len(labels)} labels, got {probs.shape}")
    present = np.unique(labels)
    if len(present) < 2:
        raise OneClassError(f"multi-class AUC is undefined: all {len(labels)} samples are of class "
                            f"{[classes[int(k)] if 0 <= k < len(classes) else int(k) for k in present]}")
    preds = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    per_class = {}
    for k, name in enumerate(classes):
        is_k = labels == k
        auc = float(roc_auc_score(is_k, probs[:, k]) * 100) if 0 < is_k.sum() < len(labels) else None
        per_class[name] = {"auc": auc, "num_samples": int(is_k.sum()),
                           "recall": float(matrix[k, k] / is_k.sum() * 100) if is_k.any() else None}
    defined = [c["auc"] for c in per_class.values() if c["auc"] is not None]
    macro = float(np.mean(defined))
    return {"acc": frame_level_acc(labels, preds), "balanced_acc": frame_level_balanced_acc(labels, preds),
            "auc": macro, "macro_auc": macro, "classes": list(classes), "per_class": per_class,
            "confusion_matrix": matrix.tolist()}


def multiclass_level(test: ScoredSet, val: ScoredSet | None = None) -> dict[str, dict]:
    """Image-level N-class metrics (``multiclass_metrics``) of ``test.probs``."""
    if test.probs is None:
        raise ValueError("multi-class metrics need every class's probability (ScoredSet.probs)")
    return {"frame": multiclass_metrics(test.labels, test.probs, test.classes or
                                        [f"class_{i}" for i in range(test.probs.shape[1])])}


# The metric contract: ``compute(test, val) -> {level: {metric: value}}``. ``val`` holds the
# validation predictions (None unless the mode ``needs_validation``), so a decision threshold can
# be chosen on validation data and applied to the test set.
MetricFn = Callable[[ScoredSet, "ScoredSet | None"], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class MetricMode:
    compute: MetricFn
    needs_validation: bool = False
    description: str = ""


def image_level(test: ScoredSet, val: ScoredSet | None = None) -> dict[str, dict[str, float]]:
    """Image-level metrics only (DiFF, custom lists)."""
    return {"frame": binary_metrics(test.labels, test.scores, test.preds)}


def frame_and_video_level(test: ScoredSet, val: ScoredSet | None = None) -> dict[str, dict[str, float]]:
    """Frame-level and video-level metrics (DfD). When the videos cannot be scored (mixed labels,
    one class), ``video`` is ``{'error': reason}`` and the frame-level metrics stay."""
    out = {"frame": binary_metrics(test.labels, test.scores, test.preds)}
    try:
        out["video"] = video_metrics(test.labels, test.scores, test.names)
    except (VideoGroupingError, OneClassError) as e:
        out["video"] = {"error": str(e)}  # type: ignore[dict-item]
    return out


def image_level_val_threshold(test: ScoredSet, val: ScoredSet | None) -> dict[str, dict[str, float]]:
    """Image-level metrics plus FAR/FRR/HTER/ACC at the EER threshold of the validation set."""
    if val is None:
        raise ValueError("this metric mode needs validation predictions (give --val_split or --finetune_data_path)")
    threshold = roc_eer_threshold(val.labels, val.scores)
    at = {f"{k}_at_val_threshold": v for k, v in rates_at(test.labels, test.scores, threshold).items()}
    return {"frame": {**binary_metrics(test.labels, test.scores, test.preds), "val_threshold": threshold, **at}}


# --- face anti-spoofing (SSDG-style definitions, vectorised) -------------------------
# Label 1 = real = positive, ``probs`` = P(real); prediction "real" iff prob >= threshold.
# FAR = FP / (FP + TN) (fakes accepted), FRR = FN / (FN + TP) (reals rejected); with no real samples
# FRR = 1, with no fake samples FAR = 1. Inputs are converted to float64.

def _far_frr(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, FRR, ACC) per threshold, each [T], from sorted scores (``>=`` via ``searchsorted``)."""
    pos = np.sort(probs[labels == 1])
    neg = np.sort(probs[labels == 0])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    fn, tn = len(pos) - tp, len(neg) - fp
    far = fp / float(len(neg)) if len(neg) else np.ones(len(thresholds))
    frr = fn / float(len(pos)) if len(pos) else np.ones(len(thresholds))
    acc = (tp + tn) / float(len(labels)) if len(labels) else np.zeros(len(thresholds))
    return np.asarray(far, np.float64), np.asarray(frr, np.float64), np.asarray(acc, np.float64)


def _fas_inputs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(probs) != len(labels):
        raise ValueError(f"length mismatch: {len(probs)} probs, {len(labels)} labels")
    return probs, labels


def fas_eer_grid(grid_density: int = 10000) -> np.ndarray:
    """0, 1/g, 2/g, ..., 1 and 1.1: the original's ``grid_density + 2`` candidate thresholds."""
    return np.append(np.arange(grid_density + 1) * 1.0 / float(grid_density), 1.1)


def fas_eer_states(probs, labels, grid_density: int = 10000) -> tuple[float, float, list[float], list[float]]:
    """``(EER, threshold, FRR list, FAR list)``: the threshold minimising |FRR - FAR| (the last one on
    ties), EER = (FAR + FRR) / 2 there; the lists hold FRR/FAR at every candidate threshold."""
    probs, labels = _fas_inputs(probs, labels)
    thresholds = fas_eer_grid(grid_density)
    far, frr, _ = _far_frr(probs, labels, thresholds)
    dist = np.abs(frr - far)
    best = len(dist) - 1 - int(np.argmin(dist[::-1]))
    return float((far[best] + frr[best]) / 2.0), float(thresholds[best]), frr.tolist(), far.tolist()


def fas_hter_at(probs, labels, thr: float) -> float:
    """Half total error rate (FAR + FRR) / 2 at ``thr``."""
    probs, labels = _fas_inputs(probs, labels)
    far, frr, _ = _far_frr(probs, labels, np.array([thr], np.float64))
    return float((far[0] + frr[0]) / 2.0)


def fas_acc_at(probs, labels, threshold: float) -> float:
    """Accuracy (TP + TN) / N (a fraction) at ``threshold``."""
    probs, labels = _fas_inputs(probs, labels)
    return float(_far_frr(probs, labels, np.array([threshold], np.float64))[2][0])


def tpr_at_fpr(labels, probs, fpr: float = 0.01) -> float:
    """The last TPR of sklearn's ROC curve whose FPR is <= ``fpr`` (0 when there is none)."""
    probs, labels = _fas_inputs(probs, labels)
    fprs, tprs = roc_points(labels, probs)
    ok = np.flatnonzero(fprs <= fpr)
    return float(tprs[ok[-1]]) if len(ok) else 0.0


def fas_metrics(probs, labels, source_threshold: float | None = None, fpr: float = 0.01) -> dict[str, float]:
    """FAS figures of per-video ``probs``/``labels`` (fractions): ``auc``, ``eer``, ``threshold`` and
    ``hter``/``acc`` at the EER threshold chosen on these same data (the original's oracle, S2),
    ``tpr_at_fpr``, and with ``source_threshold`` (chosen elsewhere) ``hter_src``/``acc_src`` at it."""
    probs, labels = _fas_inputs(probs, labels)
    _check_binary(labels, "AUC")
    eer, thr, _, _ = fas_eer_states(probs, labels)
    out = {"auc": float(roc_auc_score(labels, probs)), "eer": eer, "threshold": thr,
           "hter": fas_hter_at(probs, labels, thr), "acc": fas_acc_at(probs, labels, thr),
           "tpr_at_fpr": tpr_at_fpr(labels, probs, fpr)}
    if source_threshold is not None:
        out["hter_src"] = fas_hter_at(probs, labels, source_threshold)
        out["acc_src"] = fas_acc_at(probs, labels, source_threshold)
    return out


def fas_video_level(test: ScoredSet, val: ScoredSet | None = None) -> dict[str, dict[str, float]]:
    """Frame-level metrics and, under ``fas``, the FAS figures (fractions) of the per-video means of
    ``test`` (videos grouped by ``get_video_level_label_pred``): HTER/ACC at the EER threshold chosen on the test set itself (the original's
    ``hter``, S2) and, when ``val`` is given, at the EER threshold of ``val``'s videos (``hter_src``,
    ``acc_src``, ``threshold_src``)."""
    labels, probs, _ = get_video_level_label_pred(test.labels, test.names, test.scores, np.float32)
    threshold = None
    if val is not None:
        v_labels, v_probs, _ = get_video_level_label_pred(val.labels, val.names, val.scores, np.float32)
        threshold = fas_eer_states(v_probs, v_labels)[1]
    out = fas_metrics(probs, labels, source_threshold=threshold)
    if threshold is not None:
        out["threshold_src"] = threshold
    return {"frame": binary_metrics(test.labels, test.scores, test.preds), "fas": {"num_videos": len(probs), **out}}


def level_lines(metrics: dict, loss: float) -> list[str]:
    """The ``test_results.txt`` lines of computed ``metrics`` (a mode's ``compute`` output), one block per level
    present: IMAGE-LEVEL (N classes) or FRAME-LEVEL with ``loss``, the validation-threshold line, the FAS video
    figures (percent; at the test set's own EER threshold, and at the held-out source threshold when there was
    one), the VIDEO-LEVEL line."""
    f = metrics["frame"]
    lines: list[str] = []
    if "per_class" in f:  # N classes
        lines.append(f"IMAGE-LEVEL  ACC: {f['acc']:.3f}  Balanced ACC: {f['balanced_acc']:.3f}  "
                     f"macro AUC (one-vs-rest): {f['macro_auc']:.3f}  loss: {loss:.4f}")
        lines += [f"  {c}: AUC {'-' if v['auc'] is None else format(v['auc'], '.3f')}  recall "
                  f"{'-' if v['recall'] is None else format(v['recall'], '.3f')}  ({v['num_samples']} images)"
                  for c, v in f["per_class"].items()]
        lines.append(f"  confusion matrix (rows true, columns predicted {', '.join(f['classes'])}): "
                     f"{f['confusion_matrix']}")
        return lines
    lines.append(f"FRAME-LEVEL  ACC: {f['acc']:.3f}  Balanced ACC: {f['balanced_acc']:.3f}  AUC: {f['auc']:.3f}  "
                 f"EER: {f['eer']:.3f}  loss: {loss:.4f}")
    if "hter_at_val_threshold" in f:
        lines.append(f"AT VAL THRESHOLD {f['val_threshold']:.4f}  HTER: {f['hter_at_val_threshold']:.4f}  "
                     f"FAR: {f['far_at_val_threshold']:.4f}  FRR: {f['frr_at_val_threshold']:.4f}  "
                     f"ACC: {f['acc_at_val_threshold']:.3f}")
    if "fas" in metrics:
        v = metrics["fas"]
        lines.append(f"VIDEO-LEVEL  HTER: {100 * v['hter']:.2f}  AUC: {100 * v['auc']:.2f}  TPR@FPR=1%: "
                     f"{100 * v['tpr_at_fpr']:.2f}  EER threshold: {v['threshold']:.4f}  ({v['num_videos']} videos)")
        if "hter_src" in v:
            lines.append(f"AT SOURCE THRESHOLD {v['threshold_src']:.4f}  HTER: {100 * v['hter_src']:.2f}")
    if "video" in metrics and "error" in metrics["video"]:
        lines.append(f"VIDEO-LEVEL  skipped: {metrics['video']['error']}")
    elif "video" in metrics:
        v = metrics["video"]
        lines.append(f"VIDEO-LEVEL  Balanced ACC: {v['balanced_acc']:.3f}  AUC: {v['auc']:.3f}  "
                     f"EER: {v['eer']:.3f}  ({v['num_videos']} videos)")
    return lines


METRIC_MODES: dict[str, MetricMode] = {
    "image": MetricMode(image_level, description="image-level metrics"),
    "video": MetricMode(frame_and_video_level, description="frame- and video-level metrics"),
    "image_val_threshold": MetricMode(image_level_val_threshold, needs_validation=True,
                                      description="image level + HTER at the validation EER threshold"),
    "multiclass": MetricMode(multiclass_level, description="N-class image level: ACC, per-class and macro "
                                                           "one-vs-rest AUC, confusion matrix"),
    "fas": MetricMode(fas_video_level, description="FAS video level: HTER/AUC/TPR@FPR=1% (+ HTER at a "
                                                   "threshold from held-out source data when given)"),
}
