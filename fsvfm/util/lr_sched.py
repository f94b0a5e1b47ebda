"""Learning-rate and momentum schedules (per iteration, fractional epochs)."""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """A fine-tuning schedule: ``intervals`` training passes (epochs, or evaluation intervals) and the lr at a
    fractional interval (warm-up cosine, or a constant)."""

    intervals: int
    lr: Callable[[float], float]
    unit: str = "epoch"


def lr_at(epoch: float, args: argparse.Namespace) -> float:
    """Linear warm-up from 0 over ``warmup_epochs``, then half-cosine from ``lr`` to ``min_lr``."""
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    span = max(args.epochs - args.warmup_epochs, 1e-12)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / span))


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


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, args: argparse.Namespace) -> float:
    """Set every group's lr to ``lr_at(epoch) * group.get('lr_scale', 1)``; return the base lr."""
    return set_learning_rate(optimizer, lr_at(epoch, args))


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0,
                     warmup_steps: int = -1) -> np.ndarray:
    """Per-iteration values: optional linear warm-up, then ``final + (base-final)/2 * (1 + cos(pi i/n))``."""
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    n = epochs * niter_per_ep - warmup_iters
    iters = np.arange(n)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(n, 1)))
    return np.concatenate((warmup, schedule))
