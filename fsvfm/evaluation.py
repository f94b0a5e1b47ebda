"""Cross-dataset testing of a fine-tuned checkpoint, driven by a task's data: its test-set
table, class vocabulary, evaluation output and metric mode (``fsvfm.metrics.METRIC_MODES``).

``main_test_DfD.py``, ``main_test_DiFF.py`` and ``main_test_FAS.py`` each test one task; the checkpoint is
rebuilt by the task's ``rebuild``. A metric mode that ``needs_validation`` (a threshold chosen on validation
data) also gets the predictions on ``--val_split`` / ``--finetune_data_path``'s ``val/``; a task with a
``tester`` (FAS) names its own sets, the data its threshold is chosen on (FAS: the training sources' test
lists) and writes its own summary file.

Outputs in ``--output_dir``: ``test_results.txt`` (appended), ``test_results.json``,
``roc_{set}.png``, ``scores_{set}.csv`` (one row per video ``{class folder}/{name before _frame_}``;
an image without ``_frame_`` in its name is its own video) and ``scores_{set}_frames.csv`` (one row
per image: P(real) of each frame).

Unreadable images are left out, named once in the log and counted per set (``skipped_files`` and
``unreadable_files`` in ``test_results.json``). A set that cannot be tested (bad folder, bad split
file, one class, no readable image) is reported and the other sets still run; only when every set
fails does the program stop with an error.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fsvfm.data.finetune import (
    LabelledImageFolder,
    SplitFileDataset,
    TestImageFolder,
    dataset_video_names,
    split_folders,
)
from fsvfm.engine_finetune import Predictions, make_eval_loader, predict
from fsvfm.finetune_runner import add_task_flag, chosen_task, task_parents
from fsvfm.metrics import (
    METRIC_MODES,
    OneClassError,
    ScoredSet,
    VideoGroupingError,
    get_video_level_label_pred,
    level_lines,
    roc_points,
)
from fsvfm.tasks import FinetuneTask, Tester, TestSet
from fsvfm.util import dist
from fsvfm.util.amp import resolve_amp
from fsvfm.util.args import default_output_dir, downstream_parents
from fsvfm.util.checkpoint import load_checkpoint, resolve_checkpoint_path
from fsvfm.util.cli import USER_ERRORS, entry_cli, one_line
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.fileio import atomic_path, atomic_write_text
from fsvfm.util.images import unreadable_files
from fsvfm.util.log import summary_writer
from fsvfm.util.naming import ClassVocabulary, checkpoint_vocabulary
from fsvfm.util.startup import start_run

logger = logging.getLogger(__name__)

DEFAULT_TEST_ROOT = "datasets/finetune_datasets"
# settings a test command may override; they default to None (not given) = the checkpoint's
REBUILD_KEYS = ("model", "model_kwargs", "input_size", "nb_classes", "global_pool", "adapter_reduction",
                "apply_simple_augment", "normalize_from_IMN")
# fine-tuning flags a test command may carry (one command line for both programs); they do nothing here
IGNORED_TRAINING_FLAGS = ("--layer_decay", "--clip_grad", "--finetune", "--data_path")


def test_parser(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> argparse.ArgumentParser:
    """Test flags. Training flags of the fine-tuning program are accepted and unused, so
    existing commands keep working; model settings default to the checkpoint's. ``also``: the tasks
    ``--task`` may choose instead."""
    parents = [*downstream_parents(None), *task_parents(task, also)]
    p = argparse.ArgumentParser(description=task.description or f"FS-VFM test ({task.name})", parents=parents)
    add_task_flag(p, task, also)
    p.set_defaults(batch_size=64, **dict.fromkeys(REBUILD_KEYS))
    g = p.add_argument_group("testing")
    g.add_argument("--test_root", default=DEFAULT_TEST_ROOT, help="root of the test-set table's folders")
    g.add_argument("--test_sets", nargs="+", default=None, help="names from the table (default: all present)")
    g.add_argument("--test_split", default=None, help="split file to test instead of the table")
    g.add_argument("--test", default=None, metavar="DIR",
                   help="plain layout: a folder of class folders to test instead of the table (the set is named "
                        "after the folder)")
    g.add_argument("--metric_mode", default=None, choices=sorted(METRIC_MODES),
                   help="default: the task's ('image' for --test_split lists)")
    ignored = p.add_argument_group("fine-tuning flags, accepted and ignored")
    for flag in IGNORED_TRAINING_FLAGS:
        ignored.add_argument(flag, dest=f"ignored_{flag[2:]}", default=None, metavar="VALUE", help="ignored")
    if task.test_flags is not None:
        task.test_flags(p)
    return p


# ------------------------------------------------------------------------------ test sets
def select_test_sets(table: Sequence[TestSet], root: str, names: Sequence[str] | None) -> list[TestSet]:
    """The requested sets (unknown names are an error); by default those whose folder exists,
    logging which were not found. A requested set whose folder is missing is an error."""
    by_name = {t.name: t for t in table}
    unknown = [n for n in names or () if n not in by_name]
    if unknown:
        raise UsageError(f"unknown test set(s) {unknown} in --test_sets; choose from {list(by_name)}")
    chosen = [by_name[n] for n in names] if names else [t for t in table if t.in_default]
    present = [t for t in chosen if (Path(root) / t.folder / t.split).is_dir()]
    missing = [t for t in chosen if t not in present]
    if names and missing:
        raise FileNotFoundError("test set folder(s) not found: " + ", ".join(
            f"{t.name} ({Path(root) / t.folder / t.split})" for t in missing))
    if missing:
        logger.info("Test sets not found under %s (skipped): %s", root, ", ".join(t.name for t in missing))
    if not present:
        raise FileNotFoundError(
            f"none of the test sets {[t.name for t in chosen]} exists under --test_root {root} (each is "
            f"{{test_root}}/{{folder}}/{{split}}, e.g. {Path(root) / chosen[0].folder / chosen[0].split}); "
            "set --test_root, pick sets with --test_sets, or test a list file with --test_split")
    return present


def _test_sets(args: argparse.Namespace, task: FinetuneTask, tester: Tester | None, transform, num_classes: int,
               vocabulary: ClassVocabulary) -> Iterator[tuple[str, str, Callable[[], Dataset]]]:
    """``(name, source, build)`` per selected set; ``build()`` makes the data set (it may fail alone)."""
    if args.test and (args.test_split or args.test_sets):
        raise UsageError(f"--test {args.test} tests one folder: drop --test_split/--test_sets, or drop --test")
    if args.test:
        if not Path(args.test).is_dir():
            raise FileNotFoundError(f"--test {args.test}: folder not found (it holds class folders, e.g. real/, fake/)")
        yield Path(args.test).name, args.test, lambda: TestImageFolder(args.test, transform, vocabulary)
        return
    if tester is not None and not args.test_split:
        yield from tester.sets(transform)
        return
    if args.test_split:
        yield Path(args.test_split).stem, args.test_split, lambda: SplitFileDataset(
            args.test_split, transform, args.delimiter_in_split, args.dataset_abs_path, num_classes, "skip")
        return
    for t in select_test_sets(task.test_sets, args.test_root, args.test_sets):
        folder = str(Path(args.test_root) / t.folder / t.split)
        yield t.name, folder, lambda folder=folder: TestImageFolder(folder, transform, vocabulary)


def _validation_set(args: argparse.Namespace, vocabulary: ClassVocabulary, transform, num_classes: int) -> Dataset:
    """The validation data a threshold is chosen on: ``--val_split``, else ``--val DIR``, else
    ``--finetune_data_path``'s ``val/``."""
    if args.val_split:
        return SplitFileDataset(args.val_split, transform, args.delimiter_in_split, args.dataset_abs_path,
                                num_classes, "skip")
    folders = split_folders(args, "val")
    if folders:
        return LabelledImageFolder(folders[0], transform, vocabulary, "skip")
    raise UsageError(f"metric mode {args.metric_mode!r} chooses its threshold on validation data: "
                     "give --val_split FILE, --val DIR or --finetune_data_path DIR (with DIR/val)")


def _scored(dataset: Dataset, pred: Predictions, classes: Sequence[str] = ()) -> ScoredSet:
    all_names = dataset_video_names(dataset)
    return ScoredSet(pred.labels, pred.scores, pred.preds, [all_names[i] for i in pred.indices], pred.probs,
                     tuple(classes))


def run_vocabulary(args: argparse.Namespace, task: FinetuneTask, checkpoint: dict, n: int) -> ClassVocabulary:
    """The classes the test folders are labelled with. An N-class task: the checkpoint's (``--classes``
    or a ``# classes:`` line when it has none); a binary task refuses a checkpoint whose stored classes
    are not its own (a 4-class model tested as DfD would be mislabelled)."""
    if task.multiclass:
        default = task.vocabulary_for(args, args.test_split)
        vocab, _ = checkpoint_vocabulary(checkpoint, [args.resume], n, default, getattr(args, "classes", None))
        return vocab
    stored = checkpoint.get("classes")
    if stored and [str(c).lower() for c in stored] != list(task.vocabulary.names):
        raise UsageError(f"{args.resume} is a detector of the classes {', '.join(map(str, stored))}, not "
                         f"{task.name} ({', '.join(task.vocabulary.names)}): test it with --task Unified")
    if n != len(task.vocabulary.names):
        raise UsageError(f"{args.resume} has {n} outputs, the {task.name} task {len(task.vocabulary.names)}: "
                         "test an N-class detector with --task Unified")
    return task.vocabulary


# -------------------------------------------------------------------------------- outputs
def _stamp() -> str:
    return datetime.datetime.now().strftime("[%Y-%m-%d %H:%M:%S] ")


def result_lines(name: str, n_images: int, source: str, loss: float, metrics: dict, skipped: int = 0) -> list[str]:
    """``test_results.txt`` block: the set's header, then the lines of each metric level (``metrics.level_lines``)."""
    unreadable = f", {skipped} unreadable image(s) skipped" if skipped else ""
    return [f"===== {name}: {n_images} test images ({source}){unreadable} =====", *level_lines(metrics, loss)]


def append_results(path: Path, lines: Sequence[str]) -> None:
    stamp = _stamp()
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(stamp + line + "\n" for line in lines)


def save_roc(path: Path, name: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
             writer=None) -> None:
    """ROC curves (one per level) with real as the positive class; matplotlib's Agg backend. With a
    TensorBoard ``writer`` the figure also goes there (tag ``roc/{name}``)."""
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
    if writer is not None:
        writer.add_figure(f"roc/{name}", fig, close=False)
        for level, (_, _, auc) in curves.items():
            writer.add_scalar(f"test_auc/{name}/{level}", auc, 0)
    plt.close(fig)


def save_video_scores(path: Path, names: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                      decisions: np.ndarray) -> None:
    """One CSV row per video: name, label (fake 0 / real 1), mean P(real), decision, frame count.
    ``names`` [N frames]; the rest [V videos] in first-seen order (``get_video_level_label_pred``)."""
    counts = Counter(names)  # first-seen order, as the videos
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "label", "score_real", "pred", "num_frames"])
        for (video, count), lab, sc, dec in zip(counts.items(), labels, scores, decisions):
            w.writerow([video, int(lab), f"{sc:.6f}", int(dec), count])


def save_frame_scores(path: Path, pred: Predictions, dataset, names: Sequence[str],
                      classes: Sequence[str] = ()) -> None:
    """One CSV row per image in data-set order: file, video, label (fake 0 / real 1), P(real), argmax;
    with more than two ``classes``: file, video, label, argmax and ``score_{class}`` per class."""
    files = [p for p, _ in getattr(dataset, "samples", [])] or [str(i) for i in range(len(dataset))]
    many = len(classes) > 2 and pred.probs is not None
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if many:
            w.writerow(["path", "video", "label", "pred", *(f"score_{c}" for c in classes)])
            for i, video, lab, pr, row in zip(pred.indices, names, pred.labels, pred.preds, pred.probs):
                w.writerow([files[i], video, int(lab), int(pr), *(f"{v:.8f}" for v in row)])
            return
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
        raise UsageError("--resume FINE_TUNED_CHECKPOINT is required")
    _default_test_dir(args)
    return start_run(args, None, _run, task)


def _run(args: argparse.Namespace, task: FinetuneTask) -> dict:
    start = time.time()
    args.metric_mode = args.metric_mode or ("image" if args.test_split else task.metric_mode)
    ignored = [f for f in IGNORED_TRAINING_FLAGS if getattr(args, f"ignored_{f[2:]}") is not None]
    if ignored:
        logger.info("ignored (fine-tuning flags): %s", " ".join(ignored))
    device = torch.device(args.device)
    tester = task.tester(args) if task.tester is not None else None
    local = resolve_checkpoint_path(args.resume)  # hf:// fetched once; the rebuild gets the file and its content
    checkpoint = load_checkpoint(local)
    model, transform, info = task.rebuild(args.resume, device, checkpoint=checkpoint, local=local,
                                          **{k: getattr(args, k, None) for k in REBUILD_KEYS})
    model_name, n_classes = info["model"], int(info.get("nb_classes") or len(task.vocabulary.names))
    vocabulary = run_vocabulary(args, task, checkpoint, n_classes)
    for line in info.get("warnings", []):
        logger.warning("%s: %s", args.resume, line)
    out = Path(args.output_dir)
    report = {"checkpoint": str(args.resume), "model": model_name, "metric_mode": args.metric_mode,
              "classes": list(vocabulary.names), "warnings": info.get("warnings", []),
              "eval_transform": info["eval_transform"], "norm_stats": {
                  "mean": info["mean"], "std": info["std"], "source": info["norm_source"]}, "results": {}}
    if dist.is_main_process():
        append_results(out / "test_results.txt", [
            f"Testing {args.resume} ({model_name}, {args.metric_mode} metrics, {info['eval_transform']}, "
            f"normalisation from {info['norm_source']})", *(f"WARNING: {w}" for w in info.get("warnings", []))])
    evaluate_set = _set_evaluator(args, model, device, vocabulary.names)
    writer = summary_writer(args)   # ROC figures and AUCs of the test sets (rank 0)
    val = None
    if METRIC_MODES[args.metric_mode].needs_validation:
        val = evaluate_set(_validation_set(args, vocabulary, transform, n_classes), "Validation:")[1]
    elif tester is not None and not (args.test_split or args.test):
        held_out = tester.threshold_data(transform)
        val = None if held_out is None else evaluate_set(held_out, "Threshold data:")[1]
    for name, source, build in _test_sets(args, task, tester, transform, n_classes, vocabulary):
        try:
            dataset = build()
            pred, test, skipped = evaluate_set(dataset, f"Test {name}:")
            report["results"][name] = _test_one(args, name, source, test, pred.loss, val, skipped, writer)
        except USER_ERRORS as e:  # this set only: report it and go on with the others
            report["results"][name] = _set_failed(args, name, source, one_line(e))
            continue
        if dist.is_main_process():
            save_frame_scores(out / f"scores_{name}_frames.csv", pred, dataset, test.names, vocabulary.names)
    if writer is not None:
        writer.close()
    _finish(args, report, start)
    if tester is not None and dist.is_main_process():
        tester.report(report, checkpoint)
    return report


def _set_evaluator(args: argparse.Namespace, model: torch.nn.Module, device: torch.device,
                   classes: Sequence[str] = ()) -> Callable[[Dataset, str], tuple[Predictions, ScoredSet, list[str]]]:
    """``evaluate(dataset, header) -> (predictions, scored set, unreadable files)``, on every rank; the
    rebuilt ``model`` returns logits as it is (the task's ``rebuild`` contract)."""
    shard, amp = dist.get_world_size() > 1, resolve_amp(args.amp, device)

    def evaluate(dataset: Dataset, header: str) -> tuple[Predictions, ScoredSet, list[str]]:
        pred = predict(model, make_eval_loader(dataset, args, shard), device, amp=amp, gather=shard,
                       header=header, print_freq=args.print_freq)
        return pred, _scored(dataset, pred, classes), unreadable_files(dataset, device)
    return evaluate


def _set_failed(args: argparse.Namespace, name: str, source: str, reason: str, **counts: int) -> dict:
    logger.error("test set %s (%s) not evaluated: %s", name, source, reason)
    if dist.is_main_process():
        append_results(Path(args.output_dir) / "test_results.txt", [f"{name}: not evaluated: {reason}"])
    return {"source": source, **counts, "error": reason}


def _finish(args: argparse.Namespace, report: dict, start: float) -> None:
    """Timing, ``test_results.json``; a ``DataError`` when no set could be evaluated."""
    elapsed = str(datetime.timedelta(seconds=int(time.time() - start)))
    report["testing_time"] = elapsed
    out = Path(args.output_dir)
    if dist.is_main_process():
        append_results(out / "test_results.txt", [f"Testing time {elapsed}"])
        atomic_write_text(out / "test_results.json", json.dumps(report, indent=2) + "\n")
    logger.info("Testing time %s", elapsed)
    failed = [n for n, r in report["results"].items() if "error" in r]
    if failed and len(failed) == len(report["results"]):
        reasons = "; ".join(f"{n}: {report['results'][n]['error']}" for n in failed)
        raise DataError(f"no test set could be evaluated ({reasons}); see {out / 'test_results.txt'}")


def _test_one(args: argparse.Namespace, name: str, source: str, test: ScoredSet, loss: float,
              val: ScoredSet | None, skipped: Sequence[str] = (), writer=None) -> dict:
    """Metrics of one set, its ``test_results.txt`` block, ROC plot and per-video CSV (rank 0)."""
    out, main, n = Path(args.output_dir), dist.is_main_process(), len(test.labels)
    counts = {"num_images": n, "skipped_files": len(skipped)}
    if n == 0:
        return _set_failed(args, name, source, f"none of its images could be read ({len(skipped)} unreadable)",
                           **counts) | {"unreadable_files": list(skipped)}
    try:
        metrics = METRIC_MODES[args.metric_mode].compute(test, val)
    except OneClassError as e:
        return _set_failed(args, name, source, str(e), **counts) | {"unreadable_files": list(skipped)}
    lines = result_lines(name, n, source, loss, metrics, len(skipped))
    for line in lines:
        logger.info(line)
    if main:
        append_results(out / "test_results.txt", lines)
        if "per_class" not in metrics["frame"]:  # binary ROC and per-video scores
            _save_plots_and_scores(out, name, test, metrics, writer)
    return {**counts, "loss": loss, "source": source, **metrics, "unreadable_files": list(skipped)}


def _save_plots_and_scores(out: Path, name: str, test: ScoredSet, metrics: dict, writer=None) -> None:
    """``roc_{name}.png`` (frame level, and video level when it has an AUC) and ``scores_{name}.csv``
    (per video; left out with a warning when frames of different classes share a video name)."""
    curves = {"frame": (*roc_points(test.labels, test.scores), metrics["frame"]["auc"])}
    try:
        videos = get_video_level_label_pred(test.labels, test.names, test.scores)
    except VideoGroupingError as e:
        logger.warning("%s: no per-video scores file: %s", name, e)
        videos = None
    if videos is not None and "auc" in metrics.get("video", {}):
        curves["video"] = (*roc_points(videos[0], videos[1]), metrics["video"]["auc"])
    save_roc(out / f"roc_{name}.png", name, curves, writer)
    if videos is not None:
        save_video_scores(out / f"scores_{name}.csv", test.names, *videos)


def entry_points(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> tuple[Callable, Callable, Callable]:
    """``(get_args_parser, main, cli)`` of the test program of ``task`` (``--task`` may choose one of ``also``):
    ``main(args)`` tests and propagates errors (the library entry); ``cli(argv)`` is ``util.cli.run_cli``'s
    boundary (a user mistake: one line, exit code 2)."""
    def get_args_parser() -> argparse.ArgumentParser:
        return test_parser(task, also)

    def main(args: argparse.Namespace) -> dict:
        """Test ``--resume``; returns the ``test_results.json`` content. Never calls ``exit``."""
        return run(args, chosen_task(args, task))

    return get_args_parser, main, entry_cli(main, get_args_parser)
