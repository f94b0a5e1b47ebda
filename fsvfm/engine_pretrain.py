"""One FS-VFM pre-training epoch (spec 3.9): losses, AMP, accumulation, clipping, EMA target."""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, autocast
from fsvfm.util.lr_sched import adjust_learning_rate
from fsvfm.util.meters import MetricLogger, SmoothedValue
from fsvfm.util.train_step import NonFiniteGuard, micro_step, reduce_losses

logger = logging.getLogger(__name__)


class EMATarget:
    """Exponential moving average of the online weights into the target network (spec 3.9.4).

    Parameters are matched by their un-prefixed names on the unwrapped modules, so a DDP wrap
    (the original's double wrap made the match empty, spec 9.1 P1) cannot disable the update.
    Every target parameter must have an online counterpart of the same shape.
    """

    def __init__(self, online: torch.nn.Module, target: torch.nn.Module) -> None:
        online_params = dict(dist.unwrap_model(online).named_parameters())
        self.names: list[str] = []
        self.target_params: list[torch.Tensor] = []
        self.online_params: list[torch.Tensor] = []
        for name, param in dist.unwrap_model(target).named_parameters():
            src = online_params.get(name)
            if src is None or src.shape != param.shape:
                raise ValueError(f"target parameter {name} {tuple(param.shape)} has no online counterpart")
            self.names.append(name)
            self.target_params.append(param)
            self.online_params.append(src)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """``theta_t <- m * theta_t + (1 - m) * theta_o`` for every matched parameter, in one fused op."""
        torch._foreach_lerp_(self.target_params, self.online_params, 1.0 - momentum)


def forward_losses(model: torch.nn.Module, target: torch.nn.Module, batch: dict[str, torch.Tensor],
                   cl_loss_fn: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                   amp: str) -> dict[str, torch.Tensor]:
    """Losses of one batch (spec 3.1, 3.8): ``L = L_rec_all + w_sfr L_rec_sfr + w_cl L_cl``.

    batch: ``image`` [B,3,S,S], ``img_mask`` and ``specific_facial_region_mask`` [B,L] (1 = masked).
    The target encodes the full view without gradient; the online network the masked view.
    """
    imgs = batch["image"].to(device, non_blocking=True)
    img_mask = batch["img_mask"].to(device, non_blocking=True)
    sfr_mask = batch["specific_facial_region_mask"].to(device, non_blocking=True)
    with autocast(device, amp):
        with torch.no_grad():
            z = target(imgs)
        loss_rec_all, loss_rec_sfr, p, _, _ = model(imgs, img_mask, sfr_mask, mask_ratio=args.mask_ratio)
        loss_cl = cl_loss_fn(torch.stack([p.float(), z.float()], dim=1))
    loss = loss_rec_all + args.weight_sfr * loss_rec_sfr + args.weight_cl * loss_cl
    return {"loss": loss, "loss_rec_all": loss_rec_all, "loss_rec_sfr": loss_rec_sfr, "loss_cl": loss_cl}


def _momentum_at(schedule: np.ndarray, step: int) -> float:
    return float(schedule[min(step, len(schedule) - 1)])


def train_one_epoch(model: torch.nn.Module, target: torch.nn.Module, ema: EMATarget | None, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount,
                    cl_loss_fn: torch.nn.Module, momentum_schedule: np.ndarray, epoch: int, device: torch.device,
                    args: argparse.Namespace, log_writer=None) -> dict[str, float]:
    """Train the online network for one epoch; returns the epoch's global averages and skip counts.

    Per iteration: lr from the fractional epoch (every ``accum_iter`` steps), forward, one
    all-reduce of the losses and a non-finite flag, backward (DDP gradient sync only on update
    steps), clip at ``args.clip_grad`` and step on update steps, then the EMA with the momentum of
    the global step ``epoch * len(loader) + i``.
    """
    model.train()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    num_iters, accum = len(data_loader), args.accum_iter
    guard = NonFiniteGuard()
    skipped_files = torch.zeros(1, dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(metric_logger.log_every(data_loader, args.print_freq, f"Epoch: [{epoch}]")):
        update = (i + 1) % accum == 0
        if i % accum == 0:
            adjust_learning_rate(optimizer, i / num_iters + epoch, args)
        skipped_files += float(batch.get("num_skipped", 0))
        with micro_step(model, update):
            losses = forward_losses(model, target, batch, cl_loss_fn, args, device, args.amp)
            means, non_finite = reduce_losses(losses)
            if guard.skip(non_finite, optimizer, losses, epoch, i):
                continue
            norm = loss_scaler(losses["loss"] / accum, optimizer, clip_grad=args.clip_grad,
                               parameters=model.parameters(), update_grad=update)
        if norm is not None and math.isfinite(float(norm)):
            metric_logger.update(grad_norm=float(norm))
        if update:
            optimizer.zero_grad(set_to_none=True)
        if ema is not None:  # None: frozen target (--ema_mode frozen)
            ema.update(_momentum_at(momentum_schedule, epoch * num_iters + i))
        lr = optimizer.param_groups[0]["lr"]
        metric_logger.update(lr=lr, **means)
        if log_writer is not None and update:
            epoch_1000x = int((i / num_iters + epoch) * 1000)
            log_writer.add_scalar("train_loss", means["loss"], epoch_1000x)
            log_writer.add_scalar("lr", lr, epoch_1000x)
            for key in ("loss_rec_all", "loss_rec_sfr", "loss_cl"):
                log_writer.add_scalar(key, means[key], epoch_1000x)
    stats = metric_logger.global_averages()  # meters already hold all-reduced values
    stats["skipped_batches"] = guard.skipped
    stats["skipped_files"] = int(dist.all_reduce_sum(skipped_files).item())
    logger.info("Averaged stats: %s  skipped batches: %d  skipped files: %d", metric_logger, guard.skipped,
                stats["skipped_files"])
    return stats
