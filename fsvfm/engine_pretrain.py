"""One FS-VFM pre-training epoch (spec 3.9): losses, AMP, accumulation, clipping, EMA target.

The loop never waits for the device inside an iteration on the fast path (fused AdamW, no fp16
loss scaling): loss values and the all-ranks non-finite flag stay on the device, a non-finite step
is dropped on the device (``found_inf``, as ``torch.amp.GradScaler`` does) and the EMA weight is
zeroed there; the values are read back once per ``--print_freq`` iterations for the log.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from fsvfm.util import dist
from fsvfm.util.accel import supports_device_skip
from fsvfm.util.device_data import DeviceNormalize, to_device
from fsvfm.util.lr_sched import adjust_learning_rate
from fsvfm.util.misc import MetricLogger, NativeScalerWithGradNormCount, SmoothedValue, autocast

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")
MAX_CONSECUTIVE_SKIPS = 20


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
    def update(self, momentum: float, skip: torch.Tensor | None = None) -> None:
        """``theta_t <- m * theta_t + (1 - m) * theta_o`` for every matched parameter, in one fused op.

        ``skip``: a 0-dim device tensor; when it is true the weight is 0 and the target keeps its
        values (decided on the device, no host sync).
        """
        weight: float | torch.Tensor = 1.0 - momentum
        if skip is not None:
            weight = (~skip).float() * weight
        torch._foreach_lerp_(self.target_params, self.online_params, weight)


def forward_losses(model: torch.nn.Module, target: torch.nn.Module, batch: dict[str, torch.Tensor],
                   cl_loss_fn: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                   amp: str, normalize: DeviceNormalize | None = None) -> dict[str, torch.Tensor]:
    """Losses of one batch (spec 3.1, 3.8): ``L = L_rec_all + w_sfr L_rec_sfr + w_cl L_cl``.

    batch: ``image`` [B,3,S,S] (uint8, normalised on the device by ``normalize``, or float already
    normalised), ``img_mask`` and ``specific_facial_region_mask`` [B,L] (1 = masked).
    The target encodes the full view without gradient; the online network the masked view.
    """
    imgs = to_device(batch["image"], device, normalize)
    img_mask = batch["img_mask"].to(device, non_blocking=True)
    sfr_mask = batch["specific_facial_region_mask"].to(device, non_blocking=True)
    with autocast(device, amp):
        with torch.no_grad():
            z = target(imgs)
        loss_rec_all, loss_rec_sfr, p, _, _ = model(imgs, img_mask, sfr_mask, mask_ratio=args.mask_ratio)
        loss_cl = cl_loss_fn(torch.stack([p.float(), z.float()], dim=1))
    loss = loss_rec_all + args.weight_sfr * loss_rec_sfr + args.weight_cl * loss_cl
    return {"loss": loss, "loss_rec_all": loss_rec_all, "loss_rec_sfr": loss_rec_sfr, "loss_cl": loss_cl}


def reduce_losses_on_device(losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over ranks of the losses, float [4] (non-finite values count as 0), and a bool 0-dim
    flag: did any rank see a non-finite value. One all-reduce carries both, so every rank takes the
    same skip decision (spec 9.1 P6); nothing is read back to the host."""
    parts = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
    bad = (~torch.isfinite(parts)).any().float().unsqueeze(0)
    packed = dist.all_reduce_sum(torch.cat([torch.nan_to_num(parts, nan=0.0, posinf=0.0, neginf=0.0), bad]))
    return packed[:-1], packed[-1] > 0


def reduce_losses(losses: dict[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
    """``reduce_losses_on_device`` read back: mean of each loss over ranks, and the non-finite flag."""
    sums, bad = reduce_losses_on_device(losses)
    values = torch.cat([sums, bad.float()[None]]).tolist()
    world = dist.get_world_size()
    return {k: v / world for k, v in zip(LOSS_KEYS, values)}, values[-1] > 0


@contextlib.contextmanager
def _found_inf(optimizer: torch.optim.Optimizer, flag: torch.Tensor | None) -> Iterator[None]:
    """Hand ``flag`` to a fused optimizer's step (``GradScaler``'s protocol): a true flag leaves the
    parameters, moments and step counts untouched, decided on the device."""
    if flag is None:
        yield
        return
    optimizer.found_inf = flag.float()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def train_step(model: torch.nn.Module, target: torch.nn.Module, ema: EMATarget, batch: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount,
               cl_loss_fn: torch.nn.Module, args: argparse.Namespace, device: torch.device, momentum: float, *,
               update: bool = True, window_bad: torch.Tensor | None = None,
               normalize: DeviceNormalize | None = None, device_skip: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss all-reduce, backward, optimizer step on ``update``, EMA.

    The step is dropped on every rank when any micro-batch of the accumulation window was
    non-finite on any rank (``window_bad``, carried between calls). ``device_skip`` (a fused
    optimizer, no fp16 scaler) drops it on the device; otherwise the one flag is read back on
    update steps. The EMA skips non-finite micro-batches on the device either way.
    Returns ``(row, window_bad)``: row float [9] = this rank's 4 losses, their 4 sums over ranks,
    the non-finite flag; all on the device.
    """
    losses = forward_losses(model, target, batch, cl_loss_fn, args, device, args.amp, normalize)
    sums, bad = reduce_losses_on_device(losses)
    window_bad = bad if window_bad is None else window_bad | bad
    step = update and (device_skip or not bool(window_bad))  # the fallback's one sync per update
    with _found_inf(optimizer, window_bad if update and device_skip else None):
        loss_scaler(losses["loss"] / args.accum_iter, optimizer, clip_grad=args.clip_grad,
                    parameters=model.parameters(), update_grad=step)
    ema.update(momentum, skip=bad)
    local = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
    return torch.cat([local, sums, bad.float()[None]]), window_bad


def _momentum_at(schedule: np.ndarray, step: int) -> float:
    return float(schedule[min(step, len(schedule) - 1)])


class _DeferredLog:
    """Per-iteration rows of ``train_step`` kept on the device and read back in one go at the print
    interval; then the meters, TensorBoard and the skip bookkeeping are updated in order."""

    def __init__(self, epoch: int, num_iters: int, metric_logger: MetricLogger, log_writer=None) -> None:
        self.epoch, self.num_iters = epoch, num_iters
        self.metric_logger, self.log_writer = metric_logger, log_writer
        self.rows: list[torch.Tensor] = []
        self.meta: list[tuple[int, float, bool]] = []  # iteration, lr, update step
        self.skipped = self.consecutive = 0

    def add(self, row: torch.Tensor, it: int, lr: float, update: bool) -> None:
        self.rows.append(row)
        self.meta.append((it, lr, update))

    def flush(self) -> None:
        if not self.rows:
            return
        values = torch.stack(self.rows).tolist()  # the one host sync per print interval
        world = dist.get_world_size()
        for (it, lr, update), row in zip(self.meta, values):
            if row[8] > 0:
                self._skip(it, row[:4])
                continue
            self.consecutive = 0
            means = {k: s / world for k, s in zip(LOSS_KEYS, row[4:8])}
            self.metric_logger.update(lr=lr, **means)
            if self.log_writer is not None and update:
                epoch_1000x = int((it / self.num_iters + self.epoch) * 1000)
                self.log_writer.add_scalar("train_loss", means["loss"], epoch_1000x)
                self.log_writer.add_scalar("lr", lr, epoch_1000x)
        self.rows, self.meta = [], []

    def _skip(self, it: int, local: list[float]) -> None:
        self.skipped += 1
        self.consecutive += 1
        shown = dict(zip(LOSS_KEYS, local))
        logger.warning("epoch %d iteration %d: non-finite loss on some rank, batch (and the update of its "
                       "accumulation window) skipped on all ranks (this rank: %s)", self.epoch, it, shown)
        if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise FloatingPointError(
                f"the loss was not finite for {self.consecutive} consecutive batches (last, this rank: {shown}); "
                "training diverged: lower --blr, use --amp bf16/none, or check the data")


def train_one_epoch(model: torch.nn.Module, target: torch.nn.Module, ema: EMATarget, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount,
                    cl_loss_fn: torch.nn.Module, momentum_schedule: np.ndarray, epoch: int, device: torch.device,
                    args: argparse.Namespace, log_writer=None,
                    normalize: DeviceNormalize | None = None) -> dict[str, float]:
    """Train the online network for one epoch; returns the epoch's global averages and skip counts.

    Per iteration: lr from the fractional epoch (every ``accum_iter`` steps), ``train_step`` (DDP
    gradient sync only on update steps, clip at ``args.clip_grad``, EMA with the momentum of the
    global step ``epoch * len(loader) + i``). Loss values are read back every ``args.print_freq``
    iterations; a run of ``MAX_CONSECUTIVE_SKIPS`` non-finite batches aborts there.
    """
    model.train()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    num_iters, accum = len(data_loader), args.accum_iter
    log = _DeferredLog(epoch, num_iters, metric_logger, log_writer)
    device_skip = supports_device_skip(optimizer) and args.amp != "fp16"
    skipped_files, window_bad = 0, None
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(metric_logger.log_every(data_loader, args.print_freq, f"Epoch: [{epoch}]")):
        update = (i + 1) % accum == 0
        if i % accum == 0:
            adjust_learning_rate(optimizer, i / num_iters + epoch, args)
        skipped_files += int(batch.get("num_skipped", 0))
        no_sync = model.no_sync() if not update and hasattr(model, "no_sync") else contextlib.nullcontext()
        with no_sync:
            row, window_bad = train_step(model, target, ema, batch, optimizer, loss_scaler, cl_loss_fn, args,
                                         device, _momentum_at(momentum_schedule, epoch * num_iters + i),
                                         update=update, window_bad=window_bad, normalize=normalize,
                                         device_skip=device_skip)
        if update:
            optimizer.zero_grad(set_to_none=True)
            window_bad = None
        log.add(row, i, optimizer.param_groups[0]["lr"], update)
        if i % args.print_freq == 0 or i == num_iters - 1:
            log.flush()  # before log_every prints this iteration
    stats = metric_logger.global_averages()  # meters already hold all-reduced values
    stats["skipped_batches"] = log.skipped
    total_files = torch.tensor([skipped_files], dtype=torch.float64, device=device)
    stats["skipped_files"] = int(dist.all_reduce_sum(total_files).item())
    logger.info("Averaged stats: %s  skipped batches: %d  skipped files: %d", metric_logger, log.skipped,
                stats["skipped_files"])
    return stats
