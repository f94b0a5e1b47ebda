"""Cross-dataset testing of a fine-tuned checkpoint, driven by a task's data (spec 5): its test-set
table, class vocabulary, evaluation output and metric mode (``fsvfm.util.metrics.METRIC_MODES``).

``main_test_DfD.py`` and ``main_test_DiFF.py`` are one call to ``cli(task)`` each. A metric mode
that ``needs_validation`` (a threshold chosen on validation data) also gets the predictions on
``--val_split`` / ``--finetune_data_path``'s ``val/``.

Outputs in ``--output_dir``: ``test_results.txt`` (appended, spec 5.4 layout), ``test_results.json``,
``roc_{set}.png``, ``scores_{set}.csv`` (one row per video; an image without ``_frame_`` in its
name is its own video) and ``scores_{set}_frames.csv`` (one row per image: P(real) of each frame).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fsvfm.engine_finetune import Predictions, make_eval_loader, predict
from fsvfm.finetune_setup import load_classifier_from_checkpoint
from fsvfm.tasks import FinetuneTask, TestSet
from fsvfm.util import dist
from fsvfm.util.amp import resolve_amp
from fsvfm.util.args import default_output_dir, downstream_parents
from fsvfm.util.fileio import atomic_path, atomic_write_text
from fsvfm.util.finetune_data import (
    LabelledImageFolder,
    SplitFileDataset,
    TestImageFolder,
    dataset_video_names,
)
from fsvfm.util.log import setup_logging
from fsvfm.util.metrics import METRIC_MODES, OneClassError, ScoredSet, get_video_level_label_pred, roc_points

logger = logging.getLogger(__name__)

DEFAULT_TEST_ROOT = "datasets/finetune_datasets"
# settings a test command may override; None (not given) = the checkpoint's
REBUILD_KEYS = ("model", "model_kwargs", "input_size", "nb_classes", "global_pool", "adapter_reduction",
                "apply_simple_augment", "normalize_from_IMN")


def test_parser(task: FinetuneTask) -> argparse.ArgumentParser:
    """Test flags (spec 5.1). Training flags of the fine-tuning program are accepted and unused, so
    existing commands keep working; model settings default to the checkpoint's."""
    parents = [*downstream_parents(None), *(make() for make in task.extra_parsers)]
    p = argparse.ArgumentParser(task.description or f"FS-VFM test ({task.name})", parents=parents)
    p.set_defaults(batch_size=64, input_size=None, nb_classes=None, global_pool=None, adapter_reduction=None)
    g = p.add_argument_group("testing")
    g.add_argument("--test_root", default=DEFAULT_TEST_ROOT, help="root of the test-set table's folders")
    g.add_argument("--test_sets", nargs="+", default=None, help="names from the table (default: all present)")
    g.add_argument("--test_split", default=None, help="split file to test instead of the table")
    g.add_argument("--metric_mode", default=None, choices=sorted(METRIC_MODES),
                   help="default: the task's ('image' for --test_split lists)")
    return p


# ------------------------------------------------------------------------------ test sets
def select_test_sets(table: Sequence[TestSet], root: str, names: Sequence[str] | None) -> list[TestSet]:
    """The requested sets (unknown names are an error); by default those whose folder exists,
    logging which were not found. A requested set whose folder is missing is an error."""
    by_name = {t.name: t for t in table}
    unknown = [n for n in names or () if n not in by_name]
    if unknown:
        raise ValueError(f"unknown test set(s) {unknown}; choose from {list(by_name)}")
    chosen = [by_name[n] for n in names] if names else [t for t in table if t.in_default]
    present = [t for t in chosen if (Path(root) / t.folder / t.split).is_dir()]
    missing = [t for t in chosen if t not in present]
    if names and missing:
        raise FileNotFoundError("test set folder(s) not found: " + ", ".join(
            f"{t.name} ({Path(root) / t.folder / t.split})" for t in missing))
    if missing:
        logger.info("Test sets not found under %s (skipped): %s", root, ", ".join(t.name for t in missing))
    if not present:
        raise FileNotFoundError(f"none of the test sets {[t.name for t in chosen]} exists under {root}")
    return present


def _datasets(args: argparse.Namespace, task: FinetuneTask, transform) -> Iterator[tuple[str, Dataset, str]]:
    if args.test_split:
        ds = SplitFileDataset(args.test_split, transform, args.delimiter_in_split, args.dataset_abs_path)
        yield Path(args.test_split).stem, ds, args.test_split
        return
    for t in select_test_sets(task.test_sets, args.test_root, args.test_sets):
        folder = Path(args.test_root) / t.folder / t.split
        yield t.name, TestImageFolder(str(folder), transform, task.vocabulary), str(folder)


def _validation_set(args: argparse.Namespace, task: FinetuneTask, transform) -> Dataset:
    """The validation data a threshold is chosen on: ``--val_split``, else ``--finetune_data_path``'s ``val/``."""
    if args.val_split:
        return SplitFileDataset(args.val_split, transform, args.delimiter_in_split, args.dataset_abs_path)
    if args.data_path:
        return LabelledImageFolder(str(Path(args.data_path[0]) / "val"), transform, task.vocabulary)
    raise ValueError(f"metric mode {args.metric_mode!r} chooses its threshold on validation data: "
                     "give --val_split FILE or --finetune_data_path DIR (with DIR/val)")


def _scored(dataset: Dataset, pred: Predictions) -> ScoredSet:
    all_names = dataset_video_names(dataset)
    return ScoredSet(pred.labels, pred.scores, pred.preds, [all_names[i] for i in pred.indices])


# -------------------------------------------------------------------------------- outputs
def _stamp() -> str:
    return datetime.datetime.now().strftime("[%Y-%m-%d %H:%M:%S] ")


def result_lines(name: str, n_images: int, source: str, loss: float, metrics: dict) -> list[str]:
    """``test_results.txt`` block: header, FRAME-LEVEL line, and a VIDEO-LEVEL line in video mode."""
    f = metrics["frame"]
    lines = [f"===== {name}: {n_images} test images ({source}) =====",
             f"FRAME-LEVEL  ACC: {f['acc']:.3f}  Balanced ACC: {f['balanced_acc']:.3f}  AUC: {f['auc']:.3f}  "
             f"EER: {f['eer']:.3f}  loss: {loss:.4f}"]
    if "hter_at_val_threshold" in f:
        lines.append(f"AT VAL THRESHOLD {f['val_threshold']:.4f}  HTER: {f['hter_at_val_threshold']:.4f}  "
                     f"FAR: {f['far_at_val_threshold']:.4f}  FRR: {f['frr_at_val_threshold']:.4f}  "
                     f"ACC: {f['acc_at_val_threshold']:.3f}")
    if "video" in metrics:
        v = metrics["video"]
        lines.append(f"VIDEO-LEVEL  Balanced ACC: {v['balanced_acc']:.3f}  AUC: {v['auc']:.3f}  "
                     f"EER: {v['eer']:.3f}  ({v['num_videos']} videos)")
    return lines


def append_results(path: Path, lines: Sequence[str]) -> None:
    stamp = _stamp()
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(stamp + line + "\n" for line in lines)


def save_roc(path: Path, name: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> None:
    """ROC curves (one per level) with real as the positive class; matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for level, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{level} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false positive rate (fake accepted as real)", ylabel="true positive rate (real)",
           title=name, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_video_scores(path: Path, test: ScoredSet) -> None:
    """One CSV row per video: name, label (fake 0 / real 1), mean P(real), decision, frame count."""
    labels, scores, decisions = get_video_level_label_pred(test.labels, test.names, test.scores)
    counts: dict[str, int] = {}
    for n in test.names:
        counts[n] = counts.get(n, 0) + 1
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "label", "score_real", "pred", "num_frames"])
        for (video, count), lab, sc, dec in zip(counts.items(), labels, scores, decisions):
            w.writerow([video, int(lab), f"{sc:.6f}", int(dec), count])


def save_frame_scores(path: Path, pred: Predictions, dataset, names: Sequence[str]) -> None:
    """One CSV row per image in data-set order: file, video, label (fake 0 / real 1), P(real), argmax."""
    files = [p for p, _ in getattr(dataset, "samples", [])] or [str(i) for i in range(len(dataset))]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "video", "label", "score_real", "pred"])
        for i, video, lab, sc, pr in zip(pred.indices, names, pred.labels, pred.scores, pred.preds):
            w.writerow([files[i], video, int(lab), f"{sc:.8f}", int(pr)])


# ------------------------------------------------------------------------- model and flow
def _default_test_dir(args: argparse.Namespace) -> None:
    if not args.output_dir:
        default_output_dir(args, "test")
        out = Path(args.output_dir)
        args.output_dir = str(out.parent / f"from_{Path(args.resume).resolve().parent.name}" / out.name)
    args.log_dir = args.log_dir or args.output_dir


def run(args: argparse.Namespace, task: FinetuneTask) -> dict:
    """Test ``--resume`` on every selected set of ``task``; returns the ``test_results.json`` content."""
    if not args.resume:
        raise ValueError("--resume FINE_TUNED_CHECKPOINT is required")
    _default_test_dir(args)
    dist.init_distributed_mode(args)
    setup_logging(args.output_dir, dist.get_rank())
    return dist.run_then_cleanup(_run, args, task)


def _run(args: argparse.Namespace, task: FinetuneTask) -> dict:
    start = time.time()
    args.metric_mode = args.metric_mode or ("image" if args.test_split else task.metric_mode)
    device = torch.device(args.device)
    amp = resolve_amp(args.amp, device)
    model, transform, info = load_classifier_from_checkpoint(
        args.resume, device, **{k: getattr(args, k, None) for k in REBUILD_KEYS})
    args.model = info["model"]
    out = Path(args.output_dir)
    report = {"checkpoint": str(args.resume), "model": args.model, "metric_mode": args.metric_mode,
              "eval_transform": info["eval_transform"], "norm_stats": {
                  "mean": info["mean"], "std": info["std"], "source": info["norm_source"]}, "results": {}}
    if dist.is_main_process():
        append_results(out / "test_results.txt", [
            f"Testing {args.resume} ({args.model}, {args.metric_mode} metrics, {info['eval_transform']}, "
            f"normalisation from {info['norm_source']})"])
    shard = dist.get_world_size() > 1
    val = None
    if METRIC_MODES[args.metric_mode].needs_validation:
        val_ds = _validation_set(args, task, transform)
        val = _scored(val_ds, predict(model, make_eval_loader(val_ds, args, shard), device, amp=amp, gather=shard,
                                      output_fn=task.output_fn, header="Validation:", print_freq=args.print_freq))
    for name, dataset, source in _datasets(args, task, transform):
        pred = predict(model, make_eval_loader(dataset, args, shard), device, amp=amp, gather=shard,
                       output_fn=task.output_fn, header=f"Test {name}:", print_freq=args.print_freq)
        report["results"][name] = _test_one(args, name, source, _scored(dataset, pred), pred.loss, val)
        if dist.is_main_process():
            save_frame_scores(Path(args.output_dir) / f"scores_{name}_frames.csv", pred, dataset,
                              report["results"][name].get("names") or _scored(dataset, pred).names)
    elapsed = str(datetime.timedelta(seconds=int(time.time() - start)))
    report["testing_time"] = elapsed
    if dist.is_main_process():
        append_results(out / "test_results.txt", [f"Testing time {elapsed}"])
        atomic_write_text(out / "test_results.json", json.dumps(report, indent=2) + "\n")
    logger.info("Testing time %s", elapsed)
    return report


def _test_one(args: argparse.Namespace, name: str, source: str, test: ScoredSet, loss: float,
              val: ScoredSet | None) -> dict:
    """Metrics of one set, its ``test_results.txt`` block, ROC plot and per-video CSV (rank 0)."""
    out, main = Path(args.output_dir), dist.is_main_process()
    n = len(test.labels)
    try:
        metrics = METRIC_MODES[args.metric_mode].compute(test, val)
    except OneClassError as e:  # report it and go on with the other sets
        logger.warning("test set %s (%s): %s", name, source, e)
        if main:
            append_results(out / "test_results.txt", [f"{_stamp()}{name}: {n} images, skipped: {e}"])
        return {"num_images": n, "source": source, "error": str(e)}
    lines = result_lines(name, n, source, loss, metrics)
    for line in lines:
        logger.info(line)
    if main:
        append_results(out / "test_results.txt", lines)
        curves = {"frame": (*roc_points(test.labels, test.scores), metrics["frame"]["auc"])}
        if "video" in metrics:
            v_labels, v_scores, _ = get_video_level_label_pred(test.labels, test.names, test.scores)
            curves["video"] = (*roc_points(v_labels, v_scores), metrics["video"]["auc"])
        save_roc(out / f"roc_{name}.png", name, curves)
        save_video_scores(out / f"scores_{name}.csv", test)
    return {"num_images": n, "loss": loss, "source": source, **metrics}


def cli(task: FinetuneTask, argv: list[str] | None = None) -> dict:
    return run(test_parser(task).parse_args(argv), task)
