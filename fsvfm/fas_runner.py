"""The iteration-based fine-tuning loop of cross-domain FAS (spec 6.5-6.7, 7.5), over the core's pieces.

    result = run(args)      # {'runs': [...], 'mean': {...}, 'std': {...}, 'output_dir'}; never calls exit

``--runs`` independent runs (seed ``--seed + run``), each: a fresh model from ``--pt_model`` (``task.build_model``,
encoder into ``backbone.vit``, ``task.configure_model``), Adam at a constant ``--lr``, and ``--iters // --eval_freq``
evaluation intervals. An interval is one pass of the engine's ``train_one_epoch`` over the task's training
"loader" (``--eval_freq`` balanced batches; AMP, the non-finite skip and DDP ``no_sync`` come from the engine),
then the target domain's test set is scored (``METRIC_MODES['fas']``). The original's selection is kept: the
evaluation with the lowest target HTER (ties: the later) is the run's result and checkpoint. Beside it, the
HTER at the EER threshold of the training sources' own test lists (held-out source data, S2) is reported.

Outputs in ``--op_dir``: ``{target}_vit_0_shot_checkpoint_run_{i}.pth.tar`` (original keys, ``state_dict``),
``log_detail.txt`` (a table row per evaluation), ``log.txt`` (JSON lines), TensorBoard ``run_{i}/``, and the
``--report_logger_path`` CSV (``Run, HTER, AUC, TPR@FPR=1%`` + the source-threshold HTER, ``Mean``, ``Std dev``).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fsvfm.data.fas import PROTOCOLS, fas_mean_std, fas_transform, get_protocol
from fsvfm.engine_finetune import train_one_epoch
from fsvfm.metrics import METRIC_MODES, ScoredSet
from fsvfm.models_fas import EMBED_NORMS, fas_registry_name
from fsvfm.models_vit import is_fs_adapter
from fsvfm.tasks import FAS_TASK, FinetuneTask
from fsvfm.tasks.fas import (
    DEFAULT_FAS_DATA_ROOT,
    build_source_test_set,
    fas_optimizer,
    load_fas_encoder,
    score_fas_set,
)
from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, resolve_amp
from fsvfm.util.args import classifier_parser, default_output_dir, distributed_parser, input_parser
from fsvfm.util.checkpoint import CheckpointError, save_checkpoint
from fsvfm.util.errors import UsageError
from fsvfm.util.fileio import append_json_line, atomic_write_text
from fsvfm.util.log import setup_logging, summary_writer
from fsvfm.util.norm_stats import record_mean_std
from fsvfm.util.seeding import seed_everything
from fsvfm.util.train_step import SkipStreak
from fsvfm.util.trainable import count_parameters

logger = logging.getLogger(__name__)

# Defaults of the original's two copies (S10): full fine-tuning / FS-Adapter.
RUNS = {False: 5, True: 3}
BATCH_PER_SOURCE_CLASS = {False: 12, True: 24}
CSV_COLUMNS = ("Run", "HTER", "AUC", "TPR@FPR=1%")


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def fas_parser(task: FinetuneTask = FAS_TASK) -> argparse.ArgumentParser:
    """The original's flags (spec 6.8, 7.5) plus its hard-coded values as flags (S10), over the shared parents."""
    parents = [input_parser("vit_base_patch16"), classifier_parser("spoof 0, live 1"), distributed_parser(),
               *(make() for make in task.extra_parsers)]
    p = argparse.ArgumentParser("main_finetune_FAS.py", description=task.description, parents=parents)
    p.set_defaults(drop_path=0.0)
    g = p.add_argument_group("face anti-spoofing")
    g.add_argument("--config", required=True, choices=list(PROTOCOLS),
                   help="target domain; trained on the protocol's other domains (M = OCI->M, C = OMI->C, ...)")
    g.add_argument("--pt_model", default=None, help="pre-training checkpoint (path or hf://Wolowolo/fsfm-3c/...)")
    g.add_argument("--scratch", type=_bool, nargs="?", const=True, default=False,
                   help="random initialisation when no --pt_model is given (--scratch, --scratch True/False)")
    g.add_argument("--lr", default=1e-4, type=float, help="Adam learning rate (constant)")
    g.add_argument("--wd", default=1e-6, type=float, help="Adam weight decay")
    g.add_argument("--op_dir", "--output_dir", dest="output_dir", default="", help="output folder")
    g.add_argument("--report_logger_path", default=None, help="results CSV (default: {op_dir}/performance.csv)")
    g.add_argument("--fas_data_root", default=DEFAULT_FAS_DATA_ROOT, help="folder with MCIO/{frame,txt} and WCS/")
    g.add_argument("--embed_norm", default="tokens", choices=EMBED_NORMS,
                   help="embedding normalisation: across tokens (the original, S1) or per vector")
    g.add_argument("--saturation_wrap", action="store_true", help="wrap jittered colours past 0/255 as the original (default: clip)")
    g = p.add_argument_group("schedule (hard-coded in the original)")
    g.add_argument("--iters", default=4001, type=int, help="training iterations per run")
    g.add_argument("--eval_freq", default=100, type=int, help="evaluate every N iterations")
    g.add_argument("--runs", default=None, type=int, help="independent runs (default 5; 3 for *_fs_adapter)")
    g.add_argument("--batch_size", default=None, type=int,
                   help="frames per source domain and class per iteration (default 12; 24 for *_fs_adapter)")
    g.add_argument("--test_batch_size", default=512, type=int)
    g.add_argument("--num_workers", default=0, type=int, help="loader workers (per source and class)")
    g.add_argument("--print_freq", default=20, type=int)
    g.add_argument("--log_dir", default="", help="TensorBoard folder (default: --op_dir)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Fill the model-dependent defaults and the engine's schedule settings; ``UsageError`` on a usage mistake."""
    adapter = is_fs_adapter(args.model)
    args.runs = RUNS[adapter] if args.runs is None else args.runs
    args.batch_size = BATCH_PER_SOURCE_CLASS[adapter] if args.batch_size is None else args.batch_size
    for name in ("runs", "batch_size", "eval_freq", "test_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.iters < args.eval_freq:
        raise UsageError(f"--iters {args.iters} < --eval_freq {args.eval_freq}: no evaluation would run")
    if args.trainable_modules == "fs-adapter" and not adapter:
        raise UsageError(f"--trainable_modules fs-adapter needs a *_fs_adapter --model, got {args.model}")
    if not args.pt_model and not args.scratch:
        raise UsageError("give --pt_model (a pre-training checkpoint) or --scratch (random initialisation); "
                         "ImageNet-initialised backbones are not provided")
    if args.nb_classes != 2 or not args.global_pool:
        raise UsageError("FAS models have 2 classes and global pooling; drop --nb_classes/--cls_token")
    args.report_logger_path = args.report_logger_path or str(Path(args.output_dir or ".") / "performance.csv")
    # train_one_epoch's schedule: a constant lr (min_lr = lr, no warm-up), one interval per "epoch"
    args.epochs, args.warmup_epochs, args.min_lr = args.iters // args.eval_freq, 0, args.lr
    args.accum_iter, args.clip_grad, args.pin_mem = 1, None, True


def run(args: argparse.Namespace, task: FinetuneTask = FAS_TASK) -> dict:
    """Train ``--runs`` runs and write the report; see the module docstring."""
    default_output_dir(args, "FAS")
    check_args(args)
    dist.init_distributed_mode(args)
    setup_logging(args.output_dir, dist.get_rank())
    logger.info("FAS fine-tuning\n%s", "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    if args.apply_simple_augment:
        logger.warning("--apply_simple_augment has no effect on FAS (its transforms are spec 6.3's)")
    return dist.run_then_cleanup(_runs, args, task)


@dataclass
class _Data:
    train: list
    test: Dataset
    source: Dataset | None
    source_domains: list[str]
    norm_stats: dict[str, list[float]]


def _data(args: argparse.Namespace, task: FinetuneTask) -> _Data:
    mean, std, source = fas_mean_std(args.pt_model, args.normalize_from_IMN)
    logger.info("normalisation: mean %s std %s (from %s)", mean, std, source)
    if dist.is_main_process():
        record_mean_std(args.output_dir, mean, std)
    train_tf, test_tf = (fas_transform(t, mean, std, args.input_size) for t in (True, False))
    train, test = task.build_datasets(args, train_tf, test_tf, task.vocabulary)
    held_out, domains = build_source_test_set(args, test_tf)
    protocol = get_protocol(args.config)
    logger.info("protocol %s: %s -> %s; %s; target test: %d frames; source threshold from %s", args.config,
                "+".join(protocol.train_sources), protocol.target,
                ", ".join(f"{d} {len(r)} live/{len(f)} spoof" for d, r, f in train), len(test),  # type: ignore[arg-type]
                f"{'+'.join(domains)} test lists ({len(held_out)} frames)" if held_out is not None else "nothing")  # type: ignore[arg-type]
    return _Data(train, test, held_out, domains, {"mean": mean, "std": std})


def _runs(args: argparse.Namespace, task: FinetuneTask) -> dict:
    device = torch.device(args.device)
    args.amp = resolve_amp(args.amp, device)
    data = _data(args, task)
    results = [_one_run(args, task, data, i, device) for i in range(args.runs)]
    summary = summarise(results)
    for key in ("mean", "std"):
        logger.info("%s over %d runs: HTER %.2f  AUC %.2f  TPR@FPR=1%% %.2f  HTER@source threshold %.2f",
                    key, len(results), *(summary[key][c] for c in ("hter", "auc", "tpr", "hter_src")))
    if dist.is_main_process():
        write_report(args.report_logger_path, results, data.source_domains)
        logger.info("wrote %s", args.report_logger_path)
    return {"runs": results, **summary, "output_dir": args.output_dir}


# ------------------------------------------------------------------------------------ one run
@dataclass
class _Best:
    """The run's selected evaluation (lowest target HTER, ties: the later) and its model weights."""

    hter: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    test: ScoredSet | None = None
    state: dict[str, torch.Tensor] | None = None


def _model(args: argparse.Namespace, task: FinetuneTask, device: torch.device) -> torch.nn.Module:
    model = task.build_model(args)
    if args.pt_model:
        try:
            load_fas_encoder(model, args.pt_model)
        except CheckpointError as e:
            raise CheckpointError(f"--pt_model: {e}; give a pre-training checkpoint of --model {args.model}") from e
    elif args.scratch:
        logger.info("--scratch: random initialisation")
    if task.configure_model is not None:
        task.configure_model(model, args)
    logger.info("model %s: %s", fas_registry_name(args.model), count_parameters(model))
    return model.to(device)


def _one_run(args: argparse.Namespace, task: FinetuneTask, data: _Data, run: int, device: torch.device) -> dict:
    seed_everything(args.seed + run)
    model = _model(args, task, device)
    optimizer = fas_optimizer(model, args)
    scaler = NativeScalerWithGradNormCount(device, enabled=args.amp == "fp16")
    wrapped = dist.wrap_model(model, args, find_unused_parameters=is_fs_adapter(args.model))
    if dist.get_rank():  # same initial model on every rank (DDP also broadcasts it), different batches
        seed_everything(args.seed + run + 1000 * dist.get_rank())
    loss_fn = task.make_loss(torch.nn.CrossEntropyLoss(), args)
    loader = task.build_train_loader(data.train, args, device)
    writer = summary_writer(args, f"run_{run}")
    best, start = _Best(), time.time()
    logger.info("run %d (seed %d): %d iterations, evaluation every %d\n%s", run, args.seed + run,
                args.epochs * args.eval_freq, args.eval_freq, ROW_HEADER)
    streak = SkipStreak()  # non-finite batches in a row, across evaluation intervals
    for interval in range(args.epochs):
        train = train_one_epoch(wrapped, loss_fn, loader, optimizer, device, interval, scaler, args,
                                log_writer=writer, streak=streak)
        test, test_loss = score_fas_set(model, data.test, args, device, header=f"Run {run} test:")
        iteration = (interval + 1) * args.eval_freq - 1
        metrics = {**METRIC_MODES[task.metric_mode].compute(test, None)["fas"], "loss": test_loss,
                   "iteration": iteration}
        if metrics["hter"] <= best.hter:
            # a CPU copy of the weights only when the held-out source data will score them at the end
            state = None if data.source is None else {k: v.detach().to("cpu", copy=True)
                                                      for k, v in model.state_dict().items()}
            best = _Best(metrics["hter"], metrics, test, state)
            _save(args, model, data, run, iteration, test, metrics)
        _log_evaluation(args, run, iteration, train, metrics, best, start, writer)
    if writer is not None:
        writer.close()
    return _finish_run(args, task, model, data, run, best, device)


def _finish_run(args: argparse.Namespace, task: FinetuneTask, model: torch.nn.Module, data: _Data, run: int,
                best: _Best, device: torch.device) -> dict:
    """The run's result (percent): the selected evaluation, plus HTER at the held-out source threshold."""
    m = best.metrics
    hter_src = math.nan
    if data.source is not None and best.state is not None:
        model.load_state_dict(best.state)
        source, _ = score_fas_set(model, data.source, args, device, header=f"Run {run} source test:")
        at_src = METRIC_MODES[task.metric_mode].compute(best.test, source)["fas"]  # type: ignore[arg-type]
        hter_src = at_src["hter_src"]
        logger.info("run %d: source threshold %.4f (EER threshold of %s test videos) -> target HTER %.2f "
                    "(oracle threshold %.4f: %.2f)", run, at_src["threshold_src"], "+".join(data.source_domains),
                    100 * hter_src, m["threshold"], 100 * m["hter"])
    result = {"run": run, "hter": 100 * m["hter"], "auc": 100 * m["auc"], "tpr": 100 * m["tpr_at_fpr"],
              "hter_src": 100 * hter_src, "iteration": m["iteration"]}
    logger.info("run %d best: HTER %.2f  AUC %.2f  TPR@FPR=1%% %.2f  HTER@source threshold %.2f", run,
                result["hter"], result["auc"], result["tpr"], result["hter_src"])
    return result


def checkpoint_path(args: argparse.Namespace, run: int) -> Path:
    """The original's file name: ``{op_dir}/{target}_vit_0_shot_checkpoint_run_{run}.pth.tar``."""
    return Path(args.output_dir) / f"{get_protocol(args.config).target}_vit_0_shot_checkpoint_run_{run}.pth.tar"


def _save(args: argparse.Namespace, model: torch.nn.Module, data: _Data, run: int, iteration: int,
          test: ScoredSet, m: dict[str, float]) -> None:
    """The original's keys (spec 6.7; ``best_model_EER`` holds the HTER, S7) plus how to rebuild the model."""
    if not dist.is_main_process():
        return
    frame_acc = 100 * float(np.mean(test.preds == test.labels))
    valid_arg = [m["loss"], frame_acc, m["eer"], m["hter"], m["auc"], m["threshold"], 100 * m["acc"], m["tpr_at_fpr"]]
    save_checkpoint(checkpoint_path(args, run), model.state_dict(), model_key="state_dict",
                    epoch=(iteration + 1) // args.eval_freq, args=args, model_name=fas_registry_name(args.model),
                    norm_stats=data.norm_stats, task="FAS", valid_arg=valid_arg, best_model_EER=round(m["hter"], 5),
                    best_model_ACER=m["hter"], best_model_ACC=100 * m["acc"], threshold=m["threshold"],
                    run=run, iteration=iteration)


ROW_HEADER = ("  iter | val loss | ACC@thr |  HTER  |  AUC   | TPR@1% | train loss | train acc | "
              "best ACC | best HTER | best AUC |    time")


def _log_evaluation(args: argparse.Namespace, run: int, iteration: int, train: dict[str, float],
                    m: dict[str, float], best: _Best, start: float, writer) -> None:
    """A ``log_detail.txt`` row (percent; train loss/acc are this interval's means, S8), a ``log.txt`` line
    and TensorBoard scalars."""
    b = best.metrics
    minutes = int(time.time() - start) // 60
    logger.info("%6d | %8.4f | %7.2f | %6.2f | %6.2f | %6.2f | %10.4f | %9.2f | %8.2f | %9.2f | %8.2f | %2d hr %02d min",
                iteration, m["loss"], 100 * m["acc"], 100 * m["hter"], 100 * m["auc"], 100 * m["tpr_at_fpr"],
                train["loss"], train.get("acc", math.nan), 100 * b["acc"], 100 * b["hter"], 100 * b["auc"],
                minutes // 60, minutes % 60)
    if not dist.is_main_process():
        return
    append_json_line(Path(args.output_dir) / "log.txt", {
        "run": run, "iteration": iteration, **{f"train_{k}": v for k, v in train.items()},
        **{f"test_{k}": v for k, v in m.items() if k != "iteration"}})
    for key in ("hter", "auc", "tpr_at_fpr", "loss"):
        writer.add_scalar(f"perf/test_{key}", m[key], (iteration + 1) // args.eval_freq * 1000)
    writer.flush()


# ----------------------------------------------------------------------------------- report
def summarise(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and population standard deviation over runs of each reported figure."""
    table = {c: np.array([r[c] for r in results], dtype=np.float64) for c in ("hter", "auc", "tpr", "hter_src")}
    return {"mean": {c: float(v.mean()) for c, v in table.items()},
            "std": {c: float(v.std()) for c, v in table.items()}}


def write_report(path: str | Path, results: list[dict], source_domains: list[str]) -> None:
    """``Run, HTER, AUC, TPR@FPR=1%, HTER@src_thr(...)`` (percent), one row per run, then ``Mean`` and
    ``Std dev`` (population). The last column names the held-out source data its threshold came from."""
    src = f"HTER@src_thr({'+'.join(source_domains)} test)" if source_domains else "HTER@src_thr(none)"
    summary = summarise(results)
    lines = [", ".join((*CSV_COLUMNS, src))]
    cols = ("hter", "auc", "tpr", "hter_src")
    lines += [",".join([str(r["run"]), *(f"{r[c]:.4f}" for c in cols)]) for r in results]
    lines += [",".join([name, *(f"{summary[key][c]:.4f}" for c in cols)])
              for name, key in (("Mean", "mean"), ("Std dev", "std"))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")

