"""Cross-dataset testing, driven by data: a table of test sets plus a metric mode (spec 5).

``main_test_DfD.py`` and ``main_test_DiFF.py`` are a table and one call to ``run`` each; later
tasks add their own tables (or metric modes in ``fsvfm.util.metrics.METRIC_MODES``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fsvfm.engine_finetune import Predictions, make_eval_loader, predict
from fsvfm.finetune_setup import (
    augment_parser,
    build_classifier,
    checkpoint_norm_stats,
    classifier_parser,
    parse_model_kwargs,
    split_file_parser,
)
from fsvfm.util import dist
from fsvfm.util.args import (
    default_output_dir,
    distributed_parser,
    input_parser,
    optimization_parser,
    run_parser,
)
from fsvfm.util.checkpoint import args_dict, load_checkpoint, load_model_weights, model_state_from
from fsvfm.util.fileio import atomic_path, atomic_write_text
from fsvfm.util.finetune_data import SplitFileDataset, TestImageFolder, build_transform, dataset_video_names
from fsvfm.util.log import setup_logging
from fsvfm.util.metrics import METRIC_MODES, OneClassError, get_video_level_label_pred, roc_points
from fsvfm.util.misc import resolve_amp

logger = logging.getLogger(__name__)

DEFAULT_TEST_ROOT = "datasets/finetune_datasets"
FALLBACK_MODEL = "vit_large_patch16"


@dataclass(frozen=True)
class TestSet:
    """One benchmark: ``folder`` is relative to ``--test_root`` and holds ``{split}/{fake*,real*}/``;
    ``in_default`` sets are tested when present and ``--test_sets`` is not given."""

    name: str
    folder: str
    split: str = "test"
    in_default: bool = True


def test_parser(description: str) -> argparse.ArgumentParser:
    """Test flags (spec 5.1). Training flags of the fine-tuning program are accepted and unused, so
    existing commands keep working."""
    parents = [input_parser(None), classifier_parser(), split_file_parser(), run_parser(), distributed_parser(),
               optimization_parser(epochs=50, warmup_epochs=5, min_lr=1e-6), augment_parser()]
    p = argparse.ArgumentParser(description, parents=parents)
    p.set_defaults(batch_size=64)  # --model None: the checkpoint's model, else FALLBACK_MODEL
    g = p.add_argument_group("testing")
    g.add_argument("--eval", action="store_true", help="accepted for compatibility (always evaluates)")
    g.add_argument("--dist_eval", action="store_true",
                   help="accepted; when distributed every rank tests a shard and predictions are gathered")
    g.add_argument("--test_root", default=DEFAULT_TEST_ROOT, help="root of the test-set table's folders")
    g.add_argument("--test_sets", nargs="+", default=None, help="names from the table (default: all present)")
    g.add_argument("--test_split", default=None, help="split file to test instead of the table")
    g.add_argument("--metric_mode", default=None, choices=sorted(METRIC_MODES),
                   help="'video' (frame + video level) or 'image' (default: the program's; 'image' for lists)")
    g.add_argument("--print_freq", default=100, type=int)
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


def _datasets(args, table, transform):
    if args.test_split:
        ds = SplitFileDataset(args.test_split, transform, args.delimiter_in_split, args.dataset_abs_path)
        yield Path(args.test_split).stem, ds, args.test_split
        return
    for t in select_test_sets(table, args.test_root, args.test_sets):
        folder = Path(args.test_root) / t.folder / t.split
        yield t.name, TestImageFolder(str(folder), transform=transform), str(folder)


# -------------------------------------------------------------------------------- outputs
def _stamp() -> str:
    return datetime.datetime.now().strftime("[%Y-%m-%d %H:%M:%S] ")


def result_lines(name: str, n_images: int, source: str, loss: float, metrics: dict) -> list[str]:
    """``test_results.txt`` block: header, FRAME-LEVEL line, and a VIDEO-LEVEL line in video mode."""
    f = metrics["frame"]
    lines = [f"===== {name}: {n_images} test images ({source}) =====",
             f"FRAME-LEVEL  ACC: {f['acc']:.3f}  Balanced ACC: {f['balanced_acc']:.3f}  AUC: {f['auc']:.3f}  "
             f"EER: {f['eer']:.3f}  loss: {loss:.4f}"]
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
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_video_scores(path: Path, pred: Predictions, names: Sequence[str]) -> None:
    """One CSV row per video: name, label (fake 0 / real 1), mean P(real), decision, frame count."""
    labels, scores, decisions = get_video_level_label_pred(pred.labels, names, pred.scores)
    counts: dict[str, int] = {}
    for n in names:
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
def load_classifier(args: argparse.Namespace, checkpoint: dict) -> torch.nn.Module:
    """Rebuild the fine-tuned classifier: ``--model``/``--model_kwargs`` or the checkpoint's."""
    stored = args_dict(checkpoint)
    args.model = args.model or checkpoint.get("model_name") or stored.get("model") or FALLBACK_MODEL
    if args.model_kwargs is None and stored.get("model_kwargs"):
        args.model_kwargs = parse_model_kwargs(stored["model_kwargs"])
    model = build_classifier(args)
    load_model_weights(model, model_state_from(checkpoint, args.resume), strict=True, source=args.resume)
    return model


def _default_test_dir(args: argparse.Namespace) -> None:
    if not args.output_dir:
        default_output_dir(args, "test")
        out = Path(args.output_dir)
        args.output_dir = str(out.parent / f"from_{Path(args.resume).resolve().parent.name}" / out.name)
    args.log_dir = args.output_dir


def run(args: argparse.Namespace, table: Sequence[TestSet], metric_mode: str) -> dict:
    """Test ``--resume`` on every selected set; returns the ``test_results.json`` content."""
    if not args.resume:
        raise ValueError("--resume FINE_TUNED_CHECKPOINT is required")
    _default_test_dir(args)
    dist.init_distributed_mode(args)
    setup_logging(args.output_dir, dist.get_rank())
    try:
        result = _run(args, table, metric_mode)
        dist.barrier()
        return result
    finally:
        dist.cleanup()


def _run(args: argparse.Namespace, table: Sequence[TestSet], metric_mode: str) -> dict:
    start = time.time()
    mode = args.metric_mode or ("image" if args.test_split else metric_mode)
    device = torch.device(args.device)
    amp = resolve_amp(args.amp, device)
    checkpoint = load_checkpoint(args.resume)
    model = load_classifier(args, checkpoint).to(device)
    mean, std, stats_source = checkpoint_norm_stats(args, checkpoint)
    transform = build_transform(False, args, mean, std)
    eval_tf = "resize-256 + centre-crop" if args.apply_simple_augment else "full resize"
    out = Path(args.output_dir)
    report = {"checkpoint": str(args.resume), "model": args.model, "metric_mode": mode,
              "eval_transform": f"{eval_tf} to {args.input_size}", "norm_stats": {
                  "mean": mean, "std": std, "source": stats_source}, "results": {}}
    main = dist.is_main_process()
    if main:
        append_results(out / "test_results.txt", [
            f"Testing {args.resume} ({args.model}, {mode}-level metrics, {eval_tf}, normalisation from "
            f"{stats_source})"])
    shard = dist.get_world_size() > 1
    for name, dataset, source in _datasets(args, table, transform):
        pred = predict(model, make_eval_loader(dataset, args, shard), device, amp=amp, gather=shard,
                       header=f"Test {name}:", print_freq=args.print_freq)
        all_names = dataset_video_names(dataset)
        names = [all_names[i] for i in pred.indices]
        try:
            metrics = METRIC_MODES[mode](pred.labels, pred.scores, pred.preds, names)
        except OneClassError as e:  # report it and go on with the other sets
            logger.warning("test set %s (%s): %s", name, source, e)
            report["results"][name] = {"num_images": len(pred), "source": source, "error": str(e)}
            if main:
                append_results(out / "test_results.txt", [f"{_stamp()}{name}: {len(pred)} images, skipped: {e}"])
            continue
        report["results"][name] = {"num_images": len(pred), "loss": pred.loss, "source": source, **metrics}
        lines = result_lines(name, len(pred), source, pred.loss, metrics)
        for line in lines:
            logger.info(line)
        if main:
            append_results(out / "test_results.txt", lines)
            curves = {"frame": (*roc_points(pred.labels, pred.scores), metrics["frame"]["auc"])}
            if "video" in metrics:
                v_labels, v_scores, _ = get_video_level_label_pred(pred.labels, names, pred.scores)
                curves["video"] = (*roc_points(v_labels, v_scores), metrics["video"]["auc"])
            save_roc(out / f"roc_{name}.png", name, curves)
            save_video_scores(out / f"scores_{name}.csv", pred, names)
            save_frame_scores(out / f"scores_{name}_frames.csv", pred, dataset, names)
    elapsed = str(datetime.timedelta(seconds=int(time.time() - start)))
    report["testing_time"] = elapsed
    if main:
        append_results(out / "test_results.txt", [f"Testing time {elapsed}"])
        atomic_write_text(out / "test_results.json", json.dumps(report, indent=2) + "\n")
    logger.info("Testing time %s", elapsed)
    return report


def cli(table: Sequence[TestSet], metric_mode: str, description: str, argv: list[str] | None = None) -> dict:
    return run(test_parser(description).parse_args(argv), table, metric_mode)
