"""The optimisation-step policy both engines share: DDP gradient sync only on the update step of an
accumulation window, one all-reduce of the losses with a non-finite flag (so every rank takes the
same skip decision, spec 9.1 P6), and the skip/abort rule for non-finite batches."""
from __future__ import annotations

import contextlib
import logging

import torch

from fsvfm.util import dist

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 20


def micro_step(model: torch.nn.Module, update: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` on accumulation micro-steps of a DDP model; a no-op otherwise."""
    if not update and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def reduce_losses(losses: dict[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
    """Mean of each scalar loss over ranks (keys kept), and whether any rank saw a non-finite value.

    One all-reduce carries both. Non-finite entries count as 0 in the means.
    """
    device = next(iter(losses.values())).device
    parts = torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(()) for v in losses.values()])
    bad = (~torch.isfinite(parts)).any().float().unsqueeze(0)
    packed = dist.all_reduce_sum(torch.cat([torch.nan_to_num(parts, nan=0.0, posinf=0.0, neginf=0.0), bad]))
    values = packed.tolist()
    world = dist.get_world_size()
    return {k: v / world for k, v in zip(losses, values)}, values[-1] > 0


class NonFiniteGuard:
    """Skip a batch whose loss is not finite on some rank (on every rank, with its partial
    accumulation window); raise ``FloatingPointError`` after ``max_consecutive`` skips in a row."""

    def __init__(self, max_consecutive: int = MAX_CONSECUTIVE_SKIPS) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def skip(self, non_finite: bool, optimizer: torch.optim.Optimizer, losses: dict[str, torch.Tensor],
             epoch: int, it: int) -> bool:
        """True when the batch must be skipped (gradients already cleared); counts the skips."""
        if not non_finite:
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        optimizer.zero_grad(set_to_none=True)
        local = {k: float(torch.as_tensor(v).detach()) for k, v in losses.items()}
        logger.warning("epoch %d iteration %d: non-finite loss on some rank, batch skipped on all ranks "
                       "(this rank: %s)", epoch, it, local)
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"the loss was not finite for {self.consecutive} consecutive batches (last, this rank: {local}); "
                "training diverged: lower --blr, use --amp bf16/none, or check the data")
        return True
