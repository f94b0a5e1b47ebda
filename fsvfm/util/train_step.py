"""The optimisation-step policy both engines share, without a host sync per iteration.

* DDP gradient sync only on the update step of an accumulation window (``micro_step``).
* One all-reduce per micro-batch carries the losses and a non-finite flag, so every rank takes the
  same skip decision (DEVIATIONS.md P6); the values stay on the device (``reduce_losses_on_device``).
* A non-finite micro-batch drops the update of its whole accumulation window on every rank
  (``backward_step``): with a fused optimizer (no fp16 loss scaling) on the device, through the
  optimizer's ``found_inf`` (``torch.amp.GradScaler``'s protocol); otherwise the one window flag
  is read back on update steps.
* Each micro-batch gives one device row (``step_row``: losses, their sums over ranks, the flag,
  the grad norm the scaler returned); ``StepLog`` reads the rows back in one go at the print
  interval, feeds the meters and TensorBoard, counts skips and raises after
  ``MAX_CONSECUTIVE_SKIPS`` non-finite batches in a row; the run of skips is a ``SkipStreak`` that
  the caller carries from epoch to epoch, so short epochs cannot reset it.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from fsvfm.util import dist
from fsvfm.util.accel import supports_device_skip
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.errors import UsageError, UserError
from fsvfm.util.meters import MetricLogger

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 20


@dataclass(frozen=True)
class StepConfig:
    """What one optimisation step needs besides its collaborators: mixed precision, accumulation window,
    gradient clipping and the progress interval; both engines take it instead of the parsed ``args``."""

    amp: str = "none"
    accum_iter: int = 1
    clip_grad: float | None = None
    print_freq: int = 100

    def __post_init__(self) -> None:
        for flag in ("accum_iter", "print_freq"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag} must be at least 1, got {getattr(self, flag)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StepConfig:
        return cls(args.amp, int(args.accum_iter), args.clip_grad, int(args.print_freq))


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss stayed non-finite (a too high learning rate, fp16 overflow, or bad data); the entry points
    print it as one line (``util.cli.run_cli``)."""


def micro_step(model: torch.nn.Module, update: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` on accumulation micro-steps of a DDP model; a no-op otherwise."""
    if not update and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def reduce_losses_on_device(losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's K scalar losses and their sums over ranks, float [K] each in key order (non-finite
    values count as 0 in the sums), and a bool 0-dim flag: did any rank see a non-finite value. One
    all-reduce carries the sums and the flag; nothing is read back to the host."""
    device = next(iter(losses.values())).device
    local = torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(()) for v in losses.values()])
    bad = (~torch.isfinite(local)).any().float().unsqueeze(0)
    packed = dist.all_reduce_sum(torch.cat([torch.nan_to_num(local, nan=0.0, posinf=0.0, neginf=0.0), bad]))
    return local, packed[:-1], packed[-1] > 0


def device_skip_enabled(optimizer: torch.optim.Optimizer, amp: str) -> bool:
    """Whether a non-finite step can be dropped on the device: a fused optimizer, and no fp16 loss
    scaling (whose ``GradScaler`` owns ``found_inf``)."""
    return supports_device_skip(optimizer) and amp != "fp16"


@contextlib.contextmanager
def _found_inf(optimizer: torch.optim.Optimizer, flag: torch.Tensor | None) -> Iterator[None]:
    """Hand ``flag`` to a fused optimizer's step: a true flag leaves the parameters, moments and step
    counts untouched, decided on the device."""
    if flag is None:
        yield
        return
    optimizer.found_inf = flag.float()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def backward_step(losses: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  loss_scaler: NativeScalerWithGradNormCount, parameters: Iterable[torch.nn.Parameter],
                  step: StepConfig, *, update: bool, window_bad: torch.Tensor | None,
                  device_skip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Reduce ``losses`` (key ``loss`` is back-propagated, divided by ``step.accum_iter``), backward,
    and on ``update`` steps clip at ``step.clip_grad``, step and clear the gradients.

    The step is dropped on every rank when any micro-batch of the window was non-finite on any rank
    (``window_bad``, carried between calls; None at a window's start). Returns ``(row, bad,
    window_bad)``: the ``step_row`` of this micro-batch, its own bool 0-dim flag, and the window
    flag to pass to the next call (None after an update step).
    """
    local, sums, bad = reduce_losses_on_device(losses)
    window_bad = bad if window_bad is None else window_bad | bad
    apply = update and (device_skip or not bool(window_bad))  # the fallback's one sync per update
    with _found_inf(optimizer, window_bad if update and device_skip else None):
        norm = loss_scaler(losses["loss"] / step.accum_iter, optimizer, clip_grad=step.clip_grad,
                           parameters=parameters, update_grad=apply)
    row = step_row(local, sums, bad, norm, window_bad)
    if not update:
        return row, bad, window_bad
    optimizer.zero_grad(set_to_none=True)
    return row, bad, None


def step_row(local: torch.Tensor, sums: torch.Tensor, bad: torch.Tensor,
             norm: torch.Tensor | None, window_bad: torch.Tensor) -> torch.Tensor:
    """float [2K+2] on the device: this rank's K losses ``local``, their K ``sums`` over ranks, the
    non-finite flag, the grad norm of the step (NaN when no step was taken or its window was dropped)."""
    if norm is None:
        grad_norm = torch.full((1,), math.nan, device=sums.device)
    else:
        grad_norm = norm.detach().float().reshape(1).to(sums.device).masked_fill(window_bad, math.nan)
    return torch.cat([local, sums, bad.float()[None], grad_norm])


@dataclass
class SkipStreak:
    """Non-finite batches in a row, across epochs: create one per run and hand it to every epoch's
    ``StepLog`` (a fresh one per epoch would let a run whose epochs are shorter than
    ``MAX_CONSECUTIVE_SKIPS`` diverge for ever)."""

    count: int = 0


class StepLog:
    """The ``step_row``s of an epoch, kept on the device and read back in one go by ``flush`` (at
    the print interval); then, in iteration order, non-finite rows are counted and logged as
    skipped (``FloatingPointError`` after ``MAX_CONSECUTIVE_SKIPS`` in a row, counted in ``streak``,
    which may come from earlier epochs), and the others update the meters (means over ranks, ``lr``,
    a finite ``grad_norm``) and, on update steps, TensorBoard at x = 1000 x fractional epoch (``tags``
    renames loss keys there)."""

    def __init__(self, epoch: int, num_iters: int, print_freq: int, metric_logger: MetricLogger, log_writer=None,
                 tags: Mapping[str, str] | None = None, streak: SkipStreak | None = None) -> None:
        self.epoch, self.num_iters, self.print_freq = epoch, num_iters, print_freq
        self.metric_logger, self.log_writer, self.tags = metric_logger, log_writer, dict(tags or {})
        self.rows: list[torch.Tensor] = []
        self.meta: list[tuple[tuple[str, ...], int, float, bool]] = []  # keys, iteration, lr, update
        self.skipped = 0
        self.streak = streak if streak is not None else SkipStreak()

    def add(self, keys: Iterable[str], row: torch.Tensor, it: int, lr: float, update: bool) -> None:
        """Keep iteration ``it``'s row; flush at the print interval, and in a single process at
        ``log_every``'s time-based lines too (``log_every`` prints after). Ranks read back at the same
        steps (a diverged run must stop on all of them at once), so there the time-based lines show the
        meters of the last print interval."""
        self.rows.append(row)
        self.meta.append((tuple(keys), it, lr, update))
        timed = self.metric_logger.log_due and dist.get_world_size() == 1
        if it % self.print_freq == 0 or it == self.num_iters - 1 or timed:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        flat, offset = torch.cat(self.rows).tolist(), 0  # the one host sync per print interval
        world = dist.get_world_size()
        for keys, it, lr, update in self.meta:
            k = len(keys)
            row, offset = flat[offset:offset + 2 * k + 2], offset + 2 * k + 2
            if row[2 * k] > 0:
                self._skip(it, dict(zip(keys, row[:k])))
                continue
            self.streak.count = 0
            self._record(it, lr, update, {key: s / world for key, s in zip(keys, row[k:2 * k])}, row[-1])
        self.rows, self.meta = [], []

    def _record(self, it: int, lr: float, update: bool, means: dict[str, float], grad_norm: float) -> None:
        self.metric_logger.update(lr=lr, **means)
        if math.isfinite(grad_norm):
            self.metric_logger.update(grad_norm=grad_norm)
        if self.log_writer is not None and update:
            step = int((it / self.num_iters + self.epoch) * 1000)
            for key, value in {**means, "lr": lr}.items():
                self.log_writer.add_scalar(self.tags.get(key, key), value, step)

    def _skip(self, it: int, local: dict[str, float]) -> None:
        self.skipped += 1
        self.streak.count += 1
        logger.warning("epoch %d iteration %d: non-finite loss on some rank, batch (and the update of its "
                       "accumulation window) skipped on all ranks (this rank: %s)", self.epoch, it, local)
        if self.streak.count >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingDivergedError(
                f"the loss was not finite for {self.streak.count} consecutive batches (last: epoch {self.epoch} "
                f"iteration {it}, this rank: {local}); training diverged: lower --blr, use --amp bf16/none, "
                "or check the data")
