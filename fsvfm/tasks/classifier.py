"""Task hooks of the ViT classifier tasks (DfD, DiFF): full fine-tuning, or the FS-Adapter (spec 7.2-7.3)
when ``--model`` is a ``vit_*_fs_adapter`` model. Whether a run is an adapter run comes from the model
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

import torch

from fsvfm.engine_finetune import LossFn, criterion_loss
from fsvfm.losses import RealAnchorConLoss
from fsvfm.models_vit import FSAdapterViT, is_fs_adapter
from fsvfm.util.checkpoint import args_dict
from fsvfm.util.errors import UsageError
from fsvfm.util.naming import ClassVocabulary
from fsvfm.util.trainable import ParamCount, apply_trainable_modules

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


def fs_adapter_loss(criterion: torch.nn.Module, args: argparse.Namespace, *, pos_class_index: int) -> LossFn:
    """``criterion(logits, targets) + args.weight_cl * RealAnchorConLoss(tau = args.temperature)`` on the
    projected bottleneck [N, 1, D / r] and the hard labels [N]; components ``cls_loss``, ``con_loss``."""
    contrastive = RealAnchorConLoss(temperature=args.temperature, pos_class_index=pos_class_index)
    weight = args.weight_cl

    def loss_fn(model, samples, targets, args, *, labels):
        logits, projected = model(samples, training=True)
        cls_loss = criterion(logits, targets)
        con_loss = contrastive(projected[:, None, :], labels)
        return cls_loss + weight * con_loss, {"cls_loss": cls_loss, "con_loss": con_loss}
    return loss_fn


def classifier_loss(vocabulary: ClassVocabulary):
    """Loss factory ``(criterion, args) -> LossFn`` of a classifier task: the plain criterion, or for an
    FS-Adapter ``--model`` the adapter objective anchored on ``vocabulary.positive`` (real / live)."""
    def make_loss(criterion: torch.nn.Module, args: argparse.Namespace) -> LossFn:
        if not is_fs_adapter(args.model):
            return criterion_loss(criterion, args)
        logger.info("FS-Adapter objective: classification + %g x RealAnchorConLoss(temperature %g, anchor class "
                    "%d = %s)", args.weight_cl, args.temperature, vocabulary.positive,
                    vocabulary.names[vocabulary.positive])
        return fs_adapter_loss(criterion, args, pos_class_index=vocabulary.positive)
    return make_loss
