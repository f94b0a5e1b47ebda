"""Learning-rate and EMA-momentum schedules: callables of the fractional epoch, set per iteration."""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """A fine-tuning schedule: ``intervals`` training passes (epochs, or evaluation intervals) and the lr at a
    fractional interval (warm-up cosine, or a constant)."""

    intervals: int
    lr: Callable[[float], float]
    unit: str = "epoch"


def warmup_cosine(t: float, base: float, final: float, warmup: float, total: float) -> float:
    """At fractional epoch ``t``: linear warm-up from 0 to ``base`` over ``warmup`` epochs, then a half-cosine
    from ``base`` to ``final`` at ``total``."""
    if t < warmup:
        return base * t / warmup
    span = max(total - warmup, 1e-12)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / span))


def lr_at(epoch: float, args: argparse.Namespace) -> float:
    """The lr of ``args`` (``lr``, ``min_lr``, ``warmup_epochs``, ``epochs``) at ``epoch``; read at the call, since
    ``args.lr`` is set when the optimizer is built."""
    return warmup_cosine(epoch, args.lr, args.min_lr, args.warmup_epochs, args.epochs)


def momentum_at(t_momentum: float, epochs: float) -> Callable[[float], float]:
    """The EMA momentum of the target network: a half-cosine from ``t_momentum`` to 1.0 over ``epochs``, no
    warm-up."""
    return partial(warmup_cosine, base=t_momentum, final=1.0, warmup=0.0, total=epochs)


def warn_if_warmup_too_long(args: argparse.Namespace) -> str | None:
    """Warn (and return the message) when ``--epochs <= --warmup_epochs``: the run then ends inside
    the linear warm-up and never trains at the learning rate it asked for."""
    if args.warmup_epochs <= 0 or args.epochs > args.warmup_epochs:
        return None
    msg = (f"--epochs {args.epochs} <= --warmup_epochs {args.warmup_epochs}: the learning rate never leaves "
           f"its warm-up ramp and reaches at most {args.epochs / args.warmup_epochs:.0%} of the set value; "
           f"lower --warmup_epochs (e.g. --warmup_epochs {max(args.epochs // 10, 0)})")
    logger.warning(msg)
    return msg


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every group's lr to ``lr * group.get('lr_scale', 1)``; return ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
