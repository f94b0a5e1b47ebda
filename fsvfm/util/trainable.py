"""Which parameters train (``--trainable_modules``), and how many do.

A mode is a rule on parameter names: a parameter trains iff its name contains one of the mode's
substrings; ``all`` leaves ``requires_grad`` as the model built it. Apply before DDP wrapping and
before the optimizer is built (the optimizer must hold only trainable parameters).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.nn as nn

logger = logging.getLogger(__name__)

TRAINABLE_MODES: dict[str, tuple[str, ...] | None] = {
    "all": None,
    # DfD/DiFF (7.2): the classifier's adapter, projector and head; everything else is frozen.
    "fs-adapter": ("adapter", "projector", "head"),
    # FAS (7.5), applied to the backbone ViT only: its unused head is frozen too; the FAS embedder and
    # classifier live outside that module and stay trainable.
    "fs-adapter-fas": ("adapter", "projector"),
}


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameter counts (elements, not tensors)."""

    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({100 * self.share:.2f}%)"


def count_parameters(model: nn.Module) -> ParamCount:
    """Count the elements of all and of the ``requires_grad`` parameters (works on the meta device)."""
    params = list(model.parameters())
    return ParamCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def apply_trainable_modules(model: nn.Module, mode: str, train_fc_norm: bool = False) -> ParamCount:
    """Freeze ``model``'s parameters outside ``mode``'s name rule and return (and log) the trainable count.

    ``train_fc_norm=False`` keeps the original (A5): the freshly created ``fc_norm`` stays frozen at identity,
    which released adapter checkpoints depend on; ``True`` trains it with the adapter.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown trainable modules {mode!r}; choose from {', '.join(TRAINABLE_MODES)}")
    keep = TRAINABLE_MODES[mode]
    if keep is not None:
        keep = keep + ("fc_norm",) if train_fc_norm else keep
        for name, p in model.named_parameters():
            p.requires_grad_(any(k in name for k in keep))
    count = count_parameters(model)
    logger.info("trainable modules %s: %s", mode, count)
    return count
