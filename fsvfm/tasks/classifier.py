"""The ViT classifier tasks (DfD, DiFF): their experiment (epochs, validation, checkpoints) and hooks: full
fine-tuning, or the FS-Adapter when ``--model`` is a ``vit_*_fs_adapter`` model. Whether a run is an adapter run comes from the model
(its registry name, ``models_vit.is_fs_adapter``), not from a separate program; the flags are
``util.args.adapter_parser``.

* ``configure_classifier(model, args)``: ``--trainable_modules`` (before DDP and the optimizer, so the
  optimizer holds only trainable parameters) and the trainable count and share in the start-up log.
* ``classifier_loss(vocabulary)``: the loss factory; for an adapter model
  ``loss = criterion(logits, targets) + weight_cl * RealAnchorConLoss(projected, labels)`` with the
  anchor class from the task's vocabulary (A1) and the hard labels from before mixup (A3), logged as
  ``cls_loss`` and ``con_loss``.
"""
from __future__ import annotations

import argparse
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fsvfm.data.finetune import build_transform, check_classes
from fsvfm.engine_finetune import LossFn, criterion_loss, evaluate, make_eval_loader
from fsvfm.finetune_setup import build_mixup_and_criterion, build_optimizer, load_pretrained_encoder
from fsvfm.losses import RealAnchorConLoss
from fsvfm.models_vit import FSAdapterViT, is_fs_adapter
from fsvfm.util import dist
from fsvfm.util.args import set_effective_lr
from fsvfm.util.checkpoint import (
    args_dict,
    best_value_in,
    drop_log_records_from,
    epoch_checkpoint_tags,
    load_checkpoint,
    restore_training_state,
    resume_path,
    save_checkpoint,
)
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.fileio import append_json_line, atomic_link
from fsvfm.util.images import unreadable_files
from fsvfm.util.log import summary_writer
from fsvfm.util.lr_sched import Schedule, lr_at, warn_if_warmup_too_long
from fsvfm.util.naming import ClassVocabulary
from fsvfm.util.norm_stats import finetune_mean_std, record_mean_std
from fsvfm.util.train_step import StepConfig
from fsvfm.util.trainable import ParamCount, apply_trainable_modules, count_parameters

logger = logging.getLogger(__name__)


def configure_classifier(model: torch.nn.Module, args: argparse.Namespace) -> ParamCount:
    """Freeze what ``--trainable_modules`` leaves out and log the trainable count and share.

    ``fs-adapter`` needs an FS-Adapter model (``UsageError`` naming the fix otherwise); ``--train_fc_norm``
    needs ``fs-adapter`` mode. Other models ignore ``--temperature``/``--weight_cl``/``--adapter_reduction``.
    """
    mode = getattr(args, "trainable_modules", "all")
    train_fc_norm = getattr(args, "train_fc_norm", False)
    check_trainable_flags(args, has_adapter=isinstance(model, FSAdapterViT))
    return apply_trainable_modules(model, mode, train_fc_norm=train_fc_norm)


def check_trainable_flags(args: argparse.Namespace, has_adapter: bool | None = None) -> None:
    """``UsageError`` naming the flag when ``--trainable_modules fs-adapter`` meets a model without an
    FS-Adapter (``has_adapter``; default: from the ``--model`` name, so it runs before anything is built), or
    ``--train_fc_norm`` comes without it."""
    mode = getattr(args, "trainable_modules", "all")
    if has_adapter is None:
        has_adapter = is_fs_adapter(args.model)
    if mode != "all" and not has_adapter:
        raise UsageError(f"--trainable_modules {mode} trains the FS-Adapter, but --model {args.model} has none: "
                         f"use --model {args.model}_fs_adapter (or --trainable_modules all)")
    if getattr(args, "train_fc_norm", False) and mode == "all":
        raise UsageError("--train_fc_norm only applies with --trainable_modules fs-adapter (with 'all' fc_norm trains)")


def check_resume_flags(args: argparse.Namespace, checkpoint: dict, path) -> None:
    """A resumed run must train what the interrupted one trained: ``UsageError`` naming the flag to add when
    ``--trainable_modules`` / ``--train_fc_norm`` differ from the checkpoint's (its optimizer holds the
    parameter groups of those flags)."""
    stored = args_dict(checkpoint)
    for flag, default in (("trainable_modules", "all"), ("train_fc_norm", False)):
        was, now = stored.get(flag, default), getattr(args, flag, default)
        if was != now:
            given = f"--{flag} {was}" if flag == "trainable_modules" else (f"--{flag}" if was else f"no --{flag}")
            raise UsageError(f"{path} was trained with {given} but this run has --{flag} {now}: rerun with "
                             f"{given} to resume it, or give another --output_dir to start afresh")


def fs_adapter_loss(criterion: torch.nn.Module, weight_cl: float, temperature: float, *,
                    pos_class_index: int) -> LossFn:
    """``criterion(logits, targets) + weight_cl * RealAnchorConLoss(tau = temperature)`` on the projected
    bottleneck [N, 1, D / r] and the hard labels [N]; components ``cls_loss``, ``con_loss``."""
    contrastive = RealAnchorConLoss(temperature=temperature, pos_class_index=pos_class_index)

    def loss_fn(model, samples, targets, *, labels):
        logits, projected = model(samples, training=True)
        cls_loss = criterion(logits, targets)
        con_loss = contrastive(projected[:, None, :], labels)
        return cls_loss + weight_cl * con_loss, {"cls_loss": cls_loss, "con_loss": con_loss}
    return loss_fn


def classifier_loss(vocabulary: ClassVocabulary):
    """Loss factory ``(criterion, args) -> LossFn`` of a classifier task: the plain criterion, or for an
    FS-Adapter ``--model`` the adapter objective (``--weight_cl``, ``--temperature``) anchored on
    ``vocabulary.positive`` (real / live)."""
    def make_loss(criterion: torch.nn.Module, args: argparse.Namespace) -> LossFn:
        if not is_fs_adapter(args.model):
            return criterion_loss(criterion)
        logger.info("FS-Adapter objective: classification + %g x RealAnchorConLoss(temperature %g, anchor class "
                    "%d = %s)", args.weight_cl, args.temperature, vocabulary.positive,
                    vocabulary.names[vocabulary.positive])
        return fs_adapter_loss(criterion, args.weight_cl, args.temperature, pos_class_index=vocabulary.positive)
    return make_loss


# ------------------------------------------------------------------------------ experiment
class ClassifierExperiment:
    """One fine-tuning run of ``--epochs`` epochs (warm-up cosine lr, AdamW over layer-decayed groups, mixup).

    After each epoch the full gathered validation set is scored; ``checkpoint-min_val_loss.pth`` is written
    when the validation loss improved and ``checkpoint-{epoch}.pth`` every ``--save_freq`` epochs and after
    the last. A resumed run takes its best validation loss from ``checkpoint-min_val_loss.pth`` too (so a
    worse re-run never replaces a better best) and drops the ``log.txt`` records it will write again.
    Unreadable images are counted (``train_skipped_files``, ``val_skipped_files`` in ``log.txt``: distinct
    files so far)."""

    runs = 1
    diverged_hint = ("; training diverged and this epoch is not saved: lower --blr/--lr, set --clip_grad, "
                     "or use --amp bf16")

    def __init__(self, args: argparse.Namespace, task, device: torch.device):
        warn_if_warmup_too_long(args)
        self.args, self.task, self.device = args, task, device
        self.schedule = Schedule(args.epochs, partial(lr_at, args=args))
        self.step = StepConfig.from_args(args)
        self.resume_from = resume_path(args)
        mean, std, source = finetune_mean_std(args.output_dir, args.finetune, args.normalize_from_IMN,
                                              resumed=self.resume_from is not None)
        logger.info("normalisation: mean %s std %s (from %s)", mean, std, source)
        if dist.is_main_process():  # the test programs find it next to the checkpoints
            record_mean_std(args.output_dir, mean, std, replace=self.resume_from is None)
        self.norm_stats = {"mean": mean, "std": std}
        self.vocabulary = vocabulary = self._vocabulary()
        nb_classes = args.nb_classes
        train_ds, val_ds = task.build_datasets(args, build_transform(True, args, mean, std),
                                               build_transform(False, args, mean, std), vocabulary)
        if task.multiclass and args.nb_classes != nb_classes:  # a split file's labels reach past the classes
            raise DataError(f"{args.train_split} has labels 0..{args.nb_classes - 1} but {nb_classes} classes are "
                            f"named ({', '.join(vocabulary.names)}); name them all with --classes or its "
                            "'# classes:' line")
        check_classes(train_ds, "training", args.nb_classes, vocabulary)
        check_classes(val_ds, "validation", args.nb_classes, vocabulary)
        self.shard = args.distributed and args.dist_eval
        logger.info("train: %d images, val: %d images (%s validation)", len(train_ds), len(val_ds),  # type: ignore[arg-type]
                    "sharded" if self.shard else "full per rank")
        self.datasets = (train_ds, val_ds)
        self.val_loader = make_eval_loader(val_ds, args, self.shard)
        self.min_val_loss, self.last_val, self.n_parameters = math.inf, {}, 0

    def _vocabulary(self) -> ClassVocabulary:
        """The run's classes; an N-class task sets ``--nb_classes`` from them (and says so)."""
        args, task = self.args, self.task
        vocabulary = task.vocabulary_for(args, args.train_split)
        if task.multiclass:
            if args.nb_classes != len(vocabulary.names):
                logger.info("--nb_classes %d from the classes %s", len(vocabulary.names), ", ".join(vocabulary.names))
            args.nb_classes, args.classes = len(vocabulary.names), list(vocabulary.names)
        logger.info("classes (index order): %s", ", ".join(f"{i} {n}" for i, n in enumerate(vocabulary.names)))
        return vocabulary

    def seeds(self, run: int) -> tuple[int, int | None]:
        return self.args.seed + dist.get_rank(), None

    def load_encoder(self, model: torch.nn.Module) -> None:
        if self.args.finetune:
            load_pretrained_encoder(model, self.args.finetune)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        args = self.args
        eff_batch = set_effective_lr(args, dist.get_world_size())
        self.n_parameters = count_parameters(model).trainable
        logger.info("model %s: %.2fM trainable parameters; base lr %.3e, actual lr %.3e, effective batch %d, "
                    "accumulation %d, amp %s", args.model, self.n_parameters / 1e6, args.blr, args.lr, eff_batch,
                    args.accum_iter, args.amp)
        return build_optimizer(model, args)

    def ddp_options(self) -> dict[str, Any]:
        return {}

    def criterion(self):
        return build_mixup_and_criterion(self.args)

    def train_loader(self, run: int):
        return self.task.build_train_loader(self.datasets[0], self.args, self.device)

    def finished(self, run: int) -> dict | None:
        return None

    def resume(self, run: int, model, optimizer, scaler) -> int:
        """Training state from the resume file; the best validation loss is the lower of the file's and that
        of ``checkpoint-min_val_loss.pth``; ``log.txt`` records from the next epoch on go."""
        args, path = self.args, self.resume_from
        if path is None:
            return args.start_epoch
        ckpt = load_checkpoint(path)
        check_resume_flags(args, ckpt, path)
        ckpt = restore_training_state(path, model, optimizer, scaler, args, checkpoint=ckpt)
        best_file = Path(args.output_dir) / "checkpoint-min_val_loss.pth"
        best = math.inf if best_file.resolve() == Path(path).resolve() else best_value_in(best_file, "min_val_loss")
        self.min_val_loss = min(float(ckpt.get("min_val_loss", math.inf)), best)  # ckpt is that file: read once
        logger.info("Resumed from %s (next epoch %d); best validation loss so far %.4f", path, args.start_epoch,
                    self.min_val_loss)
        if dist.is_main_process():
            drop_log_records_from(Path(args.output_dir) / "log.txt", args.start_epoch)
        return args.start_epoch

    def writer(self, run: int, start: int):
        self.log_writer = summary_writer(self.args)
        return self.log_writer

    def end_of_interval(self, run: int, epoch: int, model, optimizer, scaler, train: dict[str, float],
                        writer) -> None:
        """Validation, checkpoints (best validation loss, periodic), then the ``log.txt`` line and TensorBoard."""
        args = self.args
        val = evaluate(model, self.val_loader, self.device, amp=args.amp, output_fn=self.task.output_fn,
                       gather=self.shard)
        self.last_val = val
        skipped = [len(unreadable_files(ds, next(model.parameters()).device)) for ds in self.datasets]
        improved = val["loss"] < self.min_val_loss
        self.min_val_loss = val["loss"] if improved else self.min_val_loss
        tags = epoch_checkpoint_tags(epoch, args, improved, "min_val_loss")
        if tags:
            self._save(model, optimizer, scaler, tags[0], epoch)
        for tag in tags[1:]:    # the same weights: a hard link (copy where impossible), not a second save
            if dist.is_main_process():
                atomic_link(Path(args.output_dir) / f"checkpoint-{tags[0]}.pth",
                            Path(args.output_dir) / f"checkpoint-{tag}.pth")
        logger.info("epoch %d: val AUC %.3f, val loss %.4f (min %.4f); unreadable images skipped: %d training, "
                    "%d validation", epoch, val["auc"], val["loss"], self.min_val_loss, *skipped)
        if not dist.is_main_process():
            return
        append_json_line(Path(args.output_dir) / "log.txt", {
            **{f"train_{k}": v for k, v in train.items()}, "val_loss": val["loss"], "val_auc": val["auc"],
            "val_acc": val["acc"], "train_skipped_files": skipped[0], "val_skipped_files": skipped[1],
            "epoch": epoch, "n_parameters": self.n_parameters})
        for key in ("auc", "loss", "acc"):
            writer.add_scalar(f"perf/val_{key}", val[key], epoch)
        writer.flush()

    def _save(self, model, optimizer, scaler, tag: str | int, epoch: int) -> None:
        args = self.args
        if dist.is_main_process():
            save_checkpoint(Path(args.output_dir) / f"checkpoint-{tag}.pth", model.state_dict(),
                            optimizer=optimizer, epoch=epoch, scaler=scaler, args=args, model_name=args.model,
                            norm_stats=self.norm_stats, min_val_loss=self.min_val_loss, task=self.task.name,
                            classes=list(self.vocabulary.names), class_display=list(self.vocabulary.display_names),
                            # val_auc / val_acc of the epoch being saved (model_warnings)
                            val_auc=float(self.last_val["auc"]), val_acc=float(self.last_val["acc"]))

    def finish_run(self, run: int, model) -> dict:
        return {"min_val_loss": self.min_val_loss, "last_val": self.last_val, "output_dir": self.args.output_dir}

    def report(self, results: list[dict]) -> dict:
        return results[0]
