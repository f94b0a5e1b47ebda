"""Fine-tuning and evaluation loops, parameterised so every downstream task reuses them.

* ``train_one_epoch`` takes a loss hook ``loss_fn(model, samples, targets, *, labels)
  -> (loss, components)`` (see ``LossFn``) that holds its own options; the default (``criterion_loss``)
  is ``criterion(model(samples), targets)``. A task with extra loss terms (the FS-Adapter's
  contrastive term) passes its own hook; its components (e.g. ``cls_loss``, ``con_loss``) are
  all-reduced and logged next to ``loss`` on the console, in ``log.txt`` and TensorBoard.
* Scalar options come from a ``util.train_step.StepConfig`` (``amp``, ``accum_iter``, ``clip_grad``,
  ``print_freq``) and the learning rate from ``lr_at(fractional epoch)`` (the task's ``Schedule.lr``);
  collaborators (loss hook, mixup, writer) are arguments. The step policy (DDP ``no_sync`` on accumulation micro-steps,
  all-reduced non-finite skip of the accumulation window, consecutive-skip abort, grad-norm
  logging, values read back at the print interval) is the pre-training engine's, from
  ``util.train_step``.
* ``predict`` takes an ``output_fn(model, images) -> logits [N, C]`` and returns the predictions
  of the **whole** set: per-rank shards are gathered with their sample indices, de-duplicated and
  put back in data-set order, so metrics are computed once on all samples.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from fsvfm.data.finetune import IndexedDataset, ShardSampler, collate_readable
from fsvfm.metrics import binary_metrics, multiclass_metrics
from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, autocast
from fsvfm.util.errors import DataError
from fsvfm.util.lr_sched import set_learning_rate
from fsvfm.util.meters import MetricLogger, SmoothedValue
from fsvfm.util.train_step import (
    SkipStreak,
    StepConfig,
    StepLog,
    backward_step,
    device_skip_enabled,
    micro_step,
)

logger = logging.getLogger(__name__)


class LossFn(Protocol):
    """Loss hook: ``samples`` [N, 3, H, W] and ``targets`` ([N] class indices, or [N, C] soft targets
    after mixup) as the model should see them, ``labels`` [N] the original class indices. Returns
    the loss to back-propagate and named scalar components to log (``{}`` for none). Options (loss
    weights, temperature) are read once, when the task's factory builds the hook."""

    def __call__(self, model: torch.nn.Module, samples: torch.Tensor, targets: torch.Tensor, *,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ...


OutputFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def criterion_loss(criterion: torch.nn.Module) -> LossFn:
    """The plain objective ``criterion(model(samples), targets)``, no extra components."""
    def loss_fn(model, samples, targets, *, labels):
        return criterion(model(samples), targets), {}
    return loss_fn


def logits_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Default ``output_fn``: the model returns logits [N, C]."""
    return model(images)


def train_one_epoch(model: torch.nn.Module, loss_fn: LossFn, data_loader: DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    loss_scaler: NativeScalerWithGradNormCount, step: StepConfig, *,
                    lr_at: Callable[[float], float], mixup_fn: Callable | None = None,
                    log_writer=None, streak: SkipStreak | None = None) -> dict[str, float]:
    """One epoch: lr ``lr_at(epoch + it / len(loader))`` per accumulation window, mixup, autocast,
    accumulation, optional clipping.

    Batches are ``(images [N, 3, H, W], labels [N], ...)``. A batch whose loss is not finite on
    some rank drops the update of its accumulation window on every rank; too many in a row raise
    ``FloatingPointError`` (counted across epochs in ``streak``, one per run). Losses and grad norms
    are read back every ``step.print_freq`` iterations (``util.train_step.StepLog``). Returns the epoch
    averages of the all-reduced ``loss``, the hook's components, ``lr`` and ``grad_norm``, plus
    ``skipped_batches``.
    """
    model.train()
    accum = step.accum_iter
    meters = MetricLogger()
    meters.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    n_iter = len(data_loader)
    log = StepLog(epoch, n_iter, step.print_freq, meters, log_writer, streak=streak)
    device_skip, window_bad = device_skip_enabled(optimizer, step.amp), None
    optimizer.zero_grad(set_to_none=True)
    for it, batch in enumerate(meters.log_every(data_loader, step.print_freq, f"Epoch: [{epoch}]")):
        update = (it + 1) % accum == 0
        if it % accum == 0:
            set_learning_rate(optimizer, lr_at(it / n_iter + epoch))
        labels = batch[1].to(device, non_blocking=True)
        samples, targets = batch[0].to(device, non_blocking=True), labels
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, labels)
        with micro_step(model, update):
            with autocast(device, step.amp):
                loss, parts = loss_fn(model, samples, targets, labels=labels)
            losses = {"loss": loss, **parts}
            row, _, window_bad = backward_step(losses, optimizer, loss_scaler, model.parameters(), step,
                                               update=update, window_bad=window_bad, device_skip=device_skip)
        log.add(losses, row, it, max(g["lr"] for g in optimizer.param_groups), update)
    stats = meters.global_averages()  # the meters hold all-reduced values
    stats["skipped_batches"] = log.skipped
    logger.info("Averaged stats: %s  skipped batches: %d", meters, log.skipped)
    return stats


# ------------------------------------------------------------------------------- evaluation
@dataclass
class Predictions:
    """Per-sample results in data-set order: ``indices`` [N] (data-set positions), ``labels`` [N],
    ``scores`` [N] = P(class ``positive_index``), ``preds`` [N] = argmax, ``losses`` [N] (plain CE),
    ``probs`` [N, C] every class's probability."""

    indices: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    preds: np.ndarray
    losses: np.ndarray
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def loss(self) -> float:
        return float(self.losses.mean()) if len(self) else float("nan")


def make_train_loader(dataset: Dataset, args: argparse.Namespace, device: torch.device) -> DataLoader:
    """Shuffled ``DistributedSampler`` loader (also for one process), ``drop_last``; an error when
    the set cannot fill one batch per process."""
    sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                 shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
                        pin_memory=args.pin_mem and device.type == "cuda", drop_last=True)
    if len(loader) == 0:
        raise DataError(f"{len(dataset)} training images per {dist.get_world_size()} process(es) do not "  # type: ignore[arg-type]
                         f"fill one batch of {args.batch_size}")
    return loader


def make_eval_loader(dataset: Dataset, args: argparse.Namespace, shard: bool,
                     batch_size: int | None = None) -> DataLoader:
    """Loader of ``(image, label, index)`` batches without the unreadable images (a batch of only
    unreadable ones is None); with ``shard`` each rank reads an unpadded 1/W slice. ``batch_size``
    defaults to ``args.batch_size``."""
    sampler = (ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())  # type: ignore[arg-type]
               if shard else SequentialSampler(dataset))
    return DataLoader(IndexedDataset(dataset), sampler=sampler, batch_size=batch_size or args.batch_size,
                      num_workers=args.num_workers, drop_last=False, collate_fn=collate_readable,
                      pin_memory=args.pin_mem and torch.cuda.is_available())


@torch.no_grad()
def predict(model: torch.nn.Module, data_loader: DataLoader, device: torch.device, *, amp: str = "none",
            output_fn: OutputFn = logits_output, gather: bool = True, positive_index: int = 1,
            header: str = "Test:", print_freq: int = 100) -> Predictions:
    """Run the model over ``(images, labels, indices)`` batches; gather shards across ranks when
    ``gather`` (de-duplicating by index) and return all predictions sorted by index."""
    model.eval()
    rows = []
    for batch in MetricLogger().log_every(data_loader, print_freq, header):
        if batch is None:  # every image of this batch was unreadable
            continue
        images, labels, indices = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = output_fn(model, images)
        logits = logits.float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        probs = logits.softmax(dim=-1)
        rows.append(torch.cat([torch.stack([indices.to(device).double(), labels.double(),
                                            probs[:, positive_index].double(), logits.argmax(dim=-1).double(),
                                            losses.double()], dim=1), probs.double()], dim=1))
    # an empty shard still gathers a [0, 5 + C] table: C from the model's head when known
    width = rows[0].shape[1] if rows else 5 + _num_outputs(model)
    local = torch.cat(rows) if rows else torch.zeros((0, width), dtype=torch.float64, device=device)
    table = (dist.all_gather_cat(local) if gather else local).cpu().numpy()
    _, first = np.unique(table[:, 0], return_index=True)
    table = table[first]  # sorted by index, one row per sample
    return Predictions(indices=table[:, 0].astype(np.int64), labels=table[:, 1].astype(np.int64),
                       scores=table[:, 2], preds=table[:, 3].astype(np.int64), losses=table[:, 4],
                       probs=table[:, 5:])


def _num_outputs(model: torch.nn.Module) -> int:
    head = getattr(dist.unwrap_model(model), "head", None)
    return int(getattr(head, "out_features", 2))


def evaluate(model: torch.nn.Module, data_loader: DataLoader, device: torch.device, *, amp: str = "none",
             output_fn: OutputFn = logits_output, gather: bool = True) -> dict[str, float]:
    """Validation (fixed F4): loss, ACC, balanced ACC, AUC computed once on all samples
    (more than two classes: the macro one-vs-rest AUC)."""
    pred = predict(model, data_loader, device, amp=amp, output_fn=output_fn, gather=gather, header="Val:")
    stats = {"loss": pred.loss, "n": len(pred)}
    if pred.probs is not None and pred.probs.shape[1] > 2:
        m = multiclass_metrics(pred.labels, pred.probs, [str(k) for k in range(pred.probs.shape[1])])
        stats.update({k: m[k] for k in ("acc", "balanced_acc", "auc")})
    else:
        stats.update({k: v for k, v in binary_metrics(pred.labels, pred.scores, pred.preds).items() if k != "eer"})
    logger.info("* Val on %d images: loss %.4f  ACC %.3f  AUC %.3f", len(pred), stats["loss"],
                stats["acc"], stats["auc"])
    return stats
