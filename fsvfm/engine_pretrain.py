"""One FS-VFM pre-training epoch: losses, AMP, accumulation, clipping, EMA target.

The step policy (``no_sync`` on micro-steps, all-reduced non-finite skip of the accumulation
window, consecutive-skip abort, grad-norm logging) is the one of ``fsvfm.util.train_step``, shared
with fine-tuning. On the fast path (fused AdamW, no fp16 loss scaling) the loop never waits for the
device inside an iteration: losses and the non-finite flag stay on the device, a non-finite step is
dropped there (``found_inf``) and the EMA weight is zeroed there; the values are read back once per
``--print_freq`` iterations for the log. The image mask reaches the model as the collate made it (on the
CPU, pinned when the loader pins), so the model reads its kept-patch count without a sync.

The loop takes a ``util.train_step.StepConfig``, the learning rate and the EMA momentum as callables of
the fractional epoch, and a loss hook (``pretrain_loss``) that holds the loss weights.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from fsvfm.data.device import DeviceNormalize, to_device
from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, autocast
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

LOSS_KEYS = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")
TB_TAGS = {"loss": "train_loss"}  # TensorBoard names of the loss keys that differ

# (model, target, imgs [B,3,S,S], img_mask [B,L] as collated, sfr_mask [B,L]) -> the LOSS_KEYS losses
PretrainLossFn = Callable[[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
                          dict[str, torch.Tensor]]
Schedule = Callable[[float], float]


class EMATarget:
    """Exponential moving average of the online weights into the target network.

    Parameters are matched by their un-prefixed names on the unwrapped modules, so a DDP wrap
    (the original's double wrap made the match empty, DEVIATIONS.md P1) cannot disable the update.
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


def pretrain_loss(cl_loss_fn: torch.nn.Module, weight_sfr: float, weight_cl: float) -> PretrainLossFn:
    """The loss hook ``L = L_rec_all + weight_sfr L_rec_sfr + weight_cl L_cl``: the target encodes the full
    view without gradient, the online network the masked view; ``cl_loss_fn`` compares the online
    prediction with the target projection."""
    def loss_fn(model, target, imgs, img_mask, sfr_mask):
        with torch.no_grad():
            z = target(imgs)
        loss_rec_all, loss_rec_sfr, p, _, _ = model(imgs, img_mask, sfr_mask)
        loss_cl = cl_loss_fn(torch.stack([p.float(), z.float()], dim=1))
        loss = loss_rec_all + weight_sfr * loss_rec_sfr + weight_cl * loss_cl
        return {"loss": loss, "loss_rec_all": loss_rec_all, "loss_rec_sfr": loss_rec_sfr, "loss_cl": loss_cl}
    return loss_fn


def forward_losses(model: torch.nn.Module, target: torch.nn.Module, batch: dict[str, torch.Tensor],
                   loss_fn: PretrainLossFn, device: torch.device, amp: str,
                   normalize: DeviceNormalize | None = None) -> dict[str, torch.Tensor]:
    """The losses of one batch under autocast.

    batch: ``image`` [B,3,S,S] (uint8, normalised on the device by ``normalize``, or float already
    normalised), ``img_mask`` and ``specific_facial_region_mask`` [B,L] (1 = masked). ``img_mask`` is
    handed over where the collate left it: the model reads its count and moves it.
    """
    imgs = to_device(batch["image"], device, normalize)
    sfr_mask = batch["specific_facial_region_mask"].to(device, non_blocking=True)
    with autocast(device, amp):
        return loss_fn(model, target, imgs, batch["img_mask"], sfr_mask)


def train_step(model: torch.nn.Module, target: torch.nn.Module, ema: EMATarget | None, batch: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount,
               loss_fn: PretrainLossFn, step: StepConfig, device: torch.device, momentum: float, *,
               update: bool = True, window_bad: torch.Tensor | None = None,
               normalize: DeviceNormalize | None = None, device_skip: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One micro-batch: forward, then the shared ``backward_step`` (loss all-reduce, backward, the
    optimizer step on ``update`` unless the window was non-finite), then the EMA, which skips a
    non-finite micro-batch on the device.

    Returns ``(row, window_bad)``: ``row`` float [10] on the device = this rank's 4 losses
    (``LOSS_KEYS``), their 4 sums over ranks, the non-finite flag, the grad norm (``step_row``);
    ``window_bad`` to pass to the next micro-batch of the window (None after an update).
    """
    losses = forward_losses(model, target, batch, loss_fn, device, step.amp, normalize)
    row, bad, window_bad = backward_step(losses, optimizer, loss_scaler, model.parameters(), step,
                                         update=update, window_bad=window_bad, device_skip=device_skip)
    if ema is not None:  # None: frozen target (--ema_mode frozen)
        ema.update(momentum, skip=bad)
    return row, window_bad


def train_one_epoch(model: torch.nn.Module, target: torch.nn.Module, ema: EMATarget | None, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount,
                    loss_fn: PretrainLossFn, epoch: int, device: torch.device, step: StepConfig, *,
                    lr_at: Schedule, momentum_at: Schedule, log_writer=None,
                    normalize: DeviceNormalize | None = None, streak: SkipStreak | None = None) -> dict[str, float]:
    """Train the online network for one epoch; returns the epoch's global averages and
    ``skipped_batches`` (non-finite batches of this epoch).

    Per iteration ``i`` at fractional epoch ``t = epoch + i / len(loader)``: lr ``lr_at(t)`` (set every
    ``accum_iter`` steps), ``train_step`` (DDP gradient sync only on update steps, clip at
    ``step.clip_grad``, EMA with momentum ``momentum_at(t)``). Loss values and grad norms are read back
    every ``step.print_freq`` iterations (``StepLog``); a run of ``MAX_CONSECUTIVE_SKIPS`` non-finite
    batches aborts there, counted across epochs in ``streak`` (one per run; default: this epoch only).
    """
    model.train()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    num_iters, accum = len(data_loader), step.accum_iter
    log = StepLog(epoch, num_iters, step.print_freq, metric_logger, log_writer, TB_TAGS, streak)
    device_skip = device_skip_enabled(optimizer, step.amp)
    window_bad = None
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(metric_logger.log_every(data_loader, step.print_freq, f"Epoch: [{epoch}]")):
        update = (i + 1) % accum == 0
        t = i / num_iters + epoch
        if i % accum == 0:
            set_learning_rate(optimizer, lr_at(t))
        with micro_step(model, update):
            row, window_bad = train_step(model, target, ema, batch, optimizer, loss_scaler, loss_fn, step, device,
                                         momentum_at(t), update=update, window_bad=window_bad,
                                         normalize=normalize, device_skip=device_skip)
        log.add(LOSS_KEYS, row, i, optimizer.param_groups[0]["lr"], update)
    stats = metric_logger.global_averages()  # meters already hold all-reduced values
    stats["skipped_batches"] = log.skipped
    logger.info("Averaged stats: %s  skipped batches: %d", metric_logger, log.skipped)
    return stats
