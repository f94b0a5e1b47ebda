"""Fine-tuning and evaluation loops, parameterised so every downstream task reuses them.

* ``train_one_epoch`` takes a ``loss_fn(model, samples, targets) -> (loss, extra_meters)``; the
  default (``criterion_loss``) is ``criterion(model(samples), targets)``. Adapters with extra loss
  terms pass their own function.
* ``predict`` takes an ``output_fn(model, images) -> logits [N, C]`` and returns the predictions
  of the **whole** set: per-rank shards are gathered with their sample indices, de-duplicated and
  put back in data-set order, so metrics are computed once on all samples.
"""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from fsvfm.util import dist
from fsvfm.util.finetune_data import IndexedDataset, ShardSampler
from fsvfm.util.lr_sched import adjust_learning_rate
from fsvfm.util.metrics import binary_metrics
from fsvfm.util.misc import MetricLogger, NativeScalerWithGradNormCount, SmoothedValue, autocast

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, dict[str, float]]"]
OutputFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def criterion_loss(criterion: torch.nn.Module) -> LossFn:
    """The plain objective: ``criterion(model(samples), targets)`` with no extra meters."""
    def loss_fn(model, samples, targets):
        return criterion(model(samples), targets), {}
    return loss_fn


def logits_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Default ``output_fn``: the model returns logits [N, C]."""
    return model(images)


def train_one_epoch(model: torch.nn.Module, loss_fn: LossFn, data_loader: DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    loss_scaler: NativeScalerWithGradNormCount, args: argparse.Namespace, *,
                    amp: str = "none", mixup_fn: Callable | None = None, log_writer=None,
                    print_freq: int = 100) -> dict[str, float]:
    """One epoch (spec 4.8): per-iteration lr, mixup, autocast, accumulation, optional clipping.

    Batches are ``(images [N, 3, H, W], labels [N], ...)``. A non-finite loss raises
    ``FloatingPointError`` (the caller decides; nothing calls ``exit``). Returns epoch averages.
    """
    model.train()
    accum = max(int(getattr(args, "accum_iter", 1)), 1)
    meters = MetricLogger()
    meters.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    n_iter = len(data_loader)
    optimizer.zero_grad(set_to_none=True)
    for it, batch in enumerate(meters.log_every(data_loader, print_freq, f"Epoch: [{epoch}]")):
        if it % accum == 0:
            adjust_learning_rate(optimizer, it / n_iter + epoch, args)
        samples = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        with autocast(device, amp):
            loss, extra = loss_fn(model, samples, targets)
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at epoch {epoch}, iteration {it}; stopping")
        update = (it + 1) % accum == 0
        loss_scaler(loss / accum, optimizer, clip_grad=getattr(args, "clip_grad", None),
                    parameters=model.parameters(), update_grad=update)
        if update:
            optimizer.zero_grad(set_to_none=True)
        lr = max(g["lr"] for g in optimizer.param_groups)
        meters.update(loss=loss_value, lr=lr, **extra)
        if update:
            loss_all = dist.all_reduce_mean(loss_value, device)  # every rank joins the collective
            if log_writer is not None:
                step = int((it / n_iter + epoch) * 1000)
                log_writer.add_scalar("loss", loss_all, step)
                log_writer.add_scalar("lr", lr, step)
    meters.synchronize_between_processes()
    logger.info("Averaged stats: %s", meters)
    return meters.global_averages()


# ------------------------------------------------------------------------------- evaluation
@dataclass
class Predictions:
    """Per-sample results in data-set order: ``indices`` [N] (data-set positions), ``labels`` [N],
    ``scores`` [N] = P(class ``positive_index``), ``preds`` [N] = argmax, ``losses`` [N] (plain CE)."""

    indices: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    preds: np.ndarray
    losses: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def loss(self) -> float:
        return float(self.losses.mean()) if len(self) else float("nan")


def make_eval_loader(dataset: Dataset, args: argparse.Namespace, shard: bool) -> DataLoader:
    """Loader of ``(image, label, index)``; with ``shard`` each rank reads an unpadded 1/W slice."""
    sampler = (ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())  # type: ignore[arg-type]
               if shard else SequentialSampler(dataset))
    return DataLoader(IndexedDataset(dataset), sampler=sampler, batch_size=args.batch_size,
                      num_workers=args.num_workers, drop_last=False,
                      pin_memory=args.pin_mem and torch.cuda.is_available())


@torch.no_grad()
def predict(model: torch.nn.Module, data_loader: DataLoader, device: torch.device, *, amp: str = "none",
            output_fn: OutputFn = logits_output, gather: bool = True, positive_index: int = 1,
            header: str = "Test:", print_freq: int = 100) -> Predictions:
    """Run the model over ``(images, labels, indices)`` batches; gather shards across ranks when
    ``gather`` (de-duplicating by index) and return all predictions sorted by index."""
    model.eval()
    rows = []
    for images, labels, indices in MetricLogger().log_every(data_loader, print_freq, header):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = output_fn(model, images)
        logits = logits.float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        scores = logits.softmax(dim=-1)[:, positive_index]
        rows.append(torch.stack([indices.to(device).double(), labels.double(), scores.double(),
                                 logits.argmax(dim=-1).double(), losses.double()], dim=1))
    local = torch.cat(rows) if rows else torch.zeros((0, 5), dtype=torch.float64, device=device)
    table = (dist.all_gather_cat(local) if gather else local).cpu().numpy()
    _, first = np.unique(table[:, 0], return_index=True)
    table = table[first]  # sorted by index, one row per sample
    return Predictions(indices=table[:, 0].astype(np.int64), labels=table[:, 1].astype(np.int64),
                       scores=table[:, 2], preds=table[:, 3].astype(np.int64), losses=table[:, 4])


def evaluate(model: torch.nn.Module, data_loader: DataLoader, device: torch.device, *, amp: str = "none",
             output_fn: OutputFn = logits_output, gather: bool = True) -> dict[str, float]:
    """Validation (spec 4.9, fixed F4): loss, ACC, balanced ACC, AUC computed once on all samples."""
    pred = predict(model, data_loader, device, amp=amp, output_fn=output_fn, gather=gather, header="Val:")
    stats = {"loss": pred.loss, "n": len(pred)}
    stats.update({k: v for k, v in binary_metrics(pred.labels, pred.scores, pred.preds).items() if k != "eer"})
    logger.info("* Val on %d images: loss %.4f  ACC %.3f  AUC %.3f", len(pred), stats["loss"],
                stats["acc"], stats["auc"])
    return stats
