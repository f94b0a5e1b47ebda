"""The task-generic fine-tuning runner (spec 4): a ``FinetuneTask`` (``fsvfm.tasks``) plus parsed
arguments in, checkpoints, ``log.txt``, ``log_detail.txt`` and TensorBoard scalars out.

    result = run(args, task)        # {'min_val_loss', 'last_val', 'output_dir'}; never calls exit

Per epoch: ``engine_finetune.train_one_epoch`` with the task's loss hook, validation on the full
gathered set, ``checkpoint-min_val_loss.pth`` when the validation loss improved and
``checkpoint-{epoch}.pth`` every ``--save_freq`` epochs and after the last.

Safety: weights with NaN/inf stop the run before any save (``NonFiniteWeightsError``); a resumed run
takes its best validation loss from ``checkpoint-min_val_loss.pth`` too (so a worse re-run never
replaces a better best), drops the ``log.txt`` records it will write again, and stale temp files of
killed saves are removed at start. Unreadable images are counted (``train_skipped_files``,
``val_skipped_files`` in ``log.txt``: distinct files so far).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fsvfm.data.finetune import build_transform, check_classes, check_folder_flags
from fsvfm.engine_finetune import evaluate, make_eval_loader, train_one_epoch
from fsvfm.finetune_setup import (
    build_mixup_and_criterion,
    build_optimizer,
    load_pretrained_encoder,
)
from fsvfm.tasks import FinetuneTask
from fsvfm.tasks.classifier import check_resume_flags, check_trainable_flags
from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, resolve_amp
from fsvfm.util.args import default_output_dir, downstream_parents, set_effective_lr
from fsvfm.util.checkpoint import (
    best_value_in,
    check_finite_state,
    drop_log_records_from,
    epoch_checkpoint_tags,
    load_checkpoint,
    remove_stale_temp_files,
    restore_training_state,
    resume_path,
    save_checkpoint,
)
from fsvfm.util.errors import DataError
from fsvfm.util.fileio import append_json_line, atomic_link
from fsvfm.util.images import unreadable_files
from fsvfm.util.log import setup_logging, summary_writer
from fsvfm.util.lr_sched import warn_if_warmup_too_long
from fsvfm.util.naming import DFD_VOCABULARY, ClassVocabulary
from fsvfm.util.norm_stats import finetune_mean_std, record_mean_std
from fsvfm.util.seeding import seed_everything
from fsvfm.util.train_step import SkipStreak
from fsvfm.util.trainable import count_parameters

logger = logging.getLogger(__name__)


def task_parents(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> list[argparse.ArgumentParser]:
    """The own flags of ``task`` and of the tasks ``--task`` may choose instead (each parent once)."""
    makers = list(dict.fromkeys(m for t in (task, *also) for m in t.extra_parsers))
    return [make() for make in makers]


def add_task_flag(p: argparse.ArgumentParser, task: FinetuneTask, also: Sequence[FinetuneTask]) -> None:
    if also:
        p.add_argument("--task", default=task.name, choices=[t.name for t in (task, *also)],
                       help=f"task table entry (default {task.name}; Unified: an N-class detector from class folders)")


def chosen_task(args: argparse.Namespace, task: FinetuneTask) -> FinetuneTask:
    """The table entry ``--task`` names (the program's own task, as given, without the flag)."""
    from fsvfm.tasks import TASKS
    name = getattr(args, "task", None)
    return task if name in (None, task.name) else TASKS[name]


def finetune_parser(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> argparse.ArgumentParser:
    """The fine-tuning flags (spec 4.11): shared parent groups plus the task's own (and those of the
    tasks in ``also``, which ``--task`` may choose)."""
    parents = [*downstream_parents("vit_base_patch16"), *task_parents(task, also)]
    p = argparse.ArgumentParser(description=task.description or f"FS-VFM fine-tuning ({task.name})",
                                parents=parents)
    add_task_flag(p, task, also)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    g.add_argument("--clip_grad", default=None, type=float, help="gradient norm clipping (default off)")
    g.add_argument("--finetune", default="", help="pre-training checkpoint to start from")
    return p


def run(args: argparse.Namespace, task: FinetuneTask) -> dict:
    """Fine-tune; returns ``{'min_val_loss', 'last_val', 'output_dir'}`` (``{}`` with ``--eval``)."""
    check_trainable_flags(args)  # before the start-up log: a wrong flag is one line
    check_folder_flags(args)
    default_output_dir(args, "finetune")
    dist.init_distributed_mode(args)
    setup_logging(args.output_dir, dist.get_rank())
    logger.info("job dir: %s\n%s", Path.cwd(), "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    if args.eval:
        logger.info("--eval: test a fine-tuned checkpoint with main_test_DfD.py or main_test_DiFF.py")
        return {}
    return dist.run_then_cleanup(_train, args, task)


@dataclass
class _Run:
    """The objects one fine-tuning run holds between epochs."""

    model: torch.nn.Module  # possibly DDP-wrapped
    model_without_ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: NativeScalerWithGradNormCount
    norm_stats: dict[str, list[float]]
    n_parameters: int
    task: str
    vocabulary: ClassVocabulary = DFD_VOCABULARY
    min_val_loss: float = math.inf
    streak: SkipStreak = field(default_factory=SkipStreak)  # non-finite batches in a row, across epochs
    datasets: tuple = ()  # (training set, validation set): their unreadable files are counted
    last_val: dict = field(default_factory=dict)  # val_auc / val_acc of the epoch being saved (model_warnings)


def _train(args: argparse.Namespace, task: FinetuneTask) -> dict:
    warn_if_warmup_too_long(args)
    seed_everything(args.seed + dist.get_rank())
    device = torch.device(args.device)
    args.amp = resolve_amp(args.amp, device)
    if dist.is_main_process():
        remove_stale_temp_files(args.output_dir)
    resume_from = resume_path(args)
    mean, std, source = finetune_mean_std(args.output_dir, args.finetune, args.normalize_from_IMN,
                                          resumed=resume_from is not None)
    logger.info("normalisation: mean %s std %s (from %s)", mean, std, source)
    if dist.is_main_process():  # the test programs find it next to the checkpoints
        record_mean_std(args.output_dir, mean, std, replace=resume_from is None)
    vocabulary = _run_vocabulary(args, task)
    train_loader, val_loader, shard = _data(args, task, vocabulary, mean, std, device)
    run_state = _build(args, task, device, {"mean": mean, "std": std}, resume_from)
    run_state.vocabulary = vocabulary
    run_state.datasets = (train_loader.dataset, val_loader.dataset)
    mixup_fn, criterion = build_mixup_and_criterion(args)
    logger.info("criterion %s, mixup %s", criterion.__class__.__name__, mixup_fn is not None)
    loss_fn = task.make_loss(criterion, args)
    log_writer = summary_writer(args)
    start, val = time.time(), {}
    for epoch in range(args.start_epoch, args.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        train = train_one_epoch(run_state.model, loss_fn, train_loader, run_state.optimizer, device, epoch,
                                run_state.scaler, args, mixup_fn=mixup_fn, log_writer=log_writer,
                                streak=run_state.streak)
        check_finite_state(run_state.model_without_ddp, f"the model after epoch {epoch}", hint="; training "
                           "diverged and this epoch is not saved: lower --blr/--lr, set --clip_grad, or use --amp bf16")
        val = evaluate(run_state.model_without_ddp, val_loader, device, amp=args.amp, output_fn=task.output_fn,
                       gather=shard)
        _end_of_epoch(args, epoch, run_state, train, val, log_writer)
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start)))
    if log_writer is not None:
        log_writer.close()
    return {"min_val_loss": run_state.min_val_loss, "last_val": val, "output_dir": args.output_dir}


def _run_vocabulary(args: argparse.Namespace, task: FinetuneTask) -> ClassVocabulary:
    """The run's classes; an N-class task sets ``--nb_classes`` from them (and says so)."""
    vocabulary = task.vocabulary_for(args, args.train_split)
    if task.multiclass:
        if args.nb_classes != len(vocabulary.names):
            logger.info("--nb_classes %d from the classes %s", len(vocabulary.names), ", ".join(vocabulary.names))
        args.nb_classes, args.classes = len(vocabulary.names), list(vocabulary.names)
    logger.info("classes (index order): %s", ", ".join(f"{i} {n}" for i, n in enumerate(vocabulary.names)))
    return vocabulary


def _data(args: argparse.Namespace, task: FinetuneTask, vocabulary: ClassVocabulary, mean: list[float],
          std: list[float], device: torch.device) -> tuple[DataLoader, DataLoader, bool]:
    """Training loader (the task's builder), validation loader, and whether validation is sharded."""
    nb_classes = args.nb_classes
    train_ds, val_ds = task.build_datasets(args, build_transform(True, args, mean, std),
                                           build_transform(False, args, mean, std), vocabulary)
    if task.multiclass and args.nb_classes != nb_classes:  # a split file's labels reach past the classes
        raise DataError(f"{args.train_split} has labels 0..{args.nb_classes - 1} but {nb_classes} classes are named "
                        f"({', '.join(vocabulary.names)}); name them all with --classes or its '# classes:' line")
    check_classes(train_ds, "training", args.nb_classes, vocabulary)
    check_classes(val_ds, "validation", args.nb_classes, vocabulary)
    shard = args.distributed and args.dist_eval
    logger.info("train: %d images, val: %d images (%s validation)", len(train_ds), len(val_ds),  # type: ignore[arg-type]
                "sharded" if shard else "full per rank")
    return task.build_train_loader(train_ds, args, device), make_eval_loader(val_ds, args, shard), shard


def _build(args: argparse.Namespace, task: FinetuneTask, device: torch.device,
           norm_stats: dict[str, list[float]], resume_from: Path | None) -> _Run:
    """Model (pre-trained encoder loaded, task configuration applied, DDP-wrapped once), optimizer,
    scaler, and the state of a resumed run."""
    model = task.build_model(args)
    if args.finetune:
        load_pretrained_encoder(model, args.finetune)
    if task.configure_model is not None:
        task.configure_model(model, args)
    model.to(device)
    eff_batch = set_effective_lr(args, dist.get_world_size())
    n_parameters = count_parameters(model).trainable
    logger.info("model %s: %.2fM trainable parameters; base lr %.3e, actual lr %.3e, effective batch %d, "
                "accumulation %d, amp %s", args.model, n_parameters / 1e6, args.blr, args.lr, eff_batch,
                args.accum_iter, args.amp)
    optimizer = build_optimizer(model, args)
    scaler = NativeScalerWithGradNormCount(device, enabled=args.amp == "fp16")
    run_state = _Run(dist.wrap_model(model, args), model, optimizer, scaler, norm_stats, n_parameters, task.name)
    if resume_from is not None:
        _resume(args, run_state, resume_from)
    return run_state


def _resume(args: argparse.Namespace, run_state: _Run, path: Path) -> None:
    """Training state from ``path``; the best validation loss is the lower of the file's and that of
    ``checkpoint-min_val_loss.pth`` in ``--output_dir``; ``log.txt`` records from the next epoch on go."""
    ckpt = load_checkpoint(path)
    check_resume_flags(args, ckpt, path)
    ckpt = restore_training_state(path, run_state.model_without_ddp, run_state.optimizer, run_state.scaler, args,
                                  checkpoint=ckpt)
    best_file = Path(args.output_dir) / "checkpoint-min_val_loss.pth"
    best = math.inf if best_file.resolve() == Path(path).resolve() else best_value_in(best_file, "min_val_loss")
    run_state.min_val_loss = min(float(ckpt.get("min_val_loss", math.inf)), best)  # ckpt is that file: read once
    logger.info("Resumed from %s (next epoch %d); best validation loss so far %.4f", path, args.start_epoch,
                run_state.min_val_loss)
    if dist.is_main_process():
        drop_log_records_from(Path(args.output_dir) / "log.txt", args.start_epoch)


def _end_of_epoch(args: argparse.Namespace, epoch: int, run_state: _Run, train: dict[str, float],
                  val: dict[str, Any], log_writer) -> None:
    """Checkpoints (best validation loss, periodic), then the ``log.txt`` line and TensorBoard."""
    skipped = [len(unreadable_files(ds, next(run_state.model_without_ddp.parameters()).device))
               for ds in run_state.datasets]
    improved = val["loss"] < run_state.min_val_loss
    run_state.min_val_loss = val["loss"] if improved else run_state.min_val_loss
    run_state.last_val = {"val_auc": float(val["auc"]), "val_acc": float(val["acc"])}
    tags = epoch_checkpoint_tags(epoch, args, improved, "min_val_loss")
    if tags:
        _save(args, run_state, tags[0], epoch)
    for tag in tags[1:]:    # the same weights: a hard link (copy where impossible), not a second save
        if dist.is_main_process():
            atomic_link(Path(args.output_dir) / f"checkpoint-{tags[0]}.pth", Path(args.output_dir) / f"checkpoint-{tag}.pth")
    logger.info("epoch %d: val AUC %.3f, val loss %.4f (min %.4f); unreadable images skipped: %d training, "
                "%d validation", epoch, val["auc"], val["loss"], run_state.min_val_loss, *skipped)
    if not dist.is_main_process():
        return
    append_json_line(Path(args.output_dir) / "log.txt", {
        **{f"train_{k}": v for k, v in train.items()}, "val_loss": val["loss"], "val_auc": val["auc"],
        "val_acc": val["acc"], "train_skipped_files": skipped[0], "val_skipped_files": skipped[1], "epoch": epoch,
        "n_parameters": run_state.n_parameters})
    for key in ("auc", "loss", "acc"):
        log_writer.add_scalar(f"perf/val_{key}", val[key], epoch)
    log_writer.flush()


def _save(args: argparse.Namespace, run_state: _Run, tag: str | int, epoch: int) -> None:
    if dist.is_main_process():
        save_checkpoint(Path(args.output_dir) / f"checkpoint-{tag}.pth", run_state.model_without_ddp.state_dict(),
                        optimizer=run_state.optimizer, epoch=epoch, scaler=run_state.scaler, args=args,
                        model_name=args.model, norm_stats=run_state.norm_stats,
                        min_val_loss=run_state.min_val_loss, task=run_state.task,
                        classes=list(run_state.vocabulary.names),
                        class_display=list(run_state.vocabulary.display_names), **run_state.last_val)
