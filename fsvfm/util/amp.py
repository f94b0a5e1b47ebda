"""Mixed precision: the AMP policy (which dtype on which device), autocast, and the gradient scaler
that backs every optimizer step (backward, unscale, clip, step, grad norm)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from fsvfm.util.errors import UsageError

AMP_CHOICES = ("fp16", "bf16", "none")


def resolve_amp(amp: str | None, device: torch.device | str) -> str:
    """Default: fp16 on CUDA, none elsewhere. fp16 on CPU is refused (no CPU fp16 autocast)."""
    device_type = torch.device(device).type
    if amp in (None, "", "auto"):
        return "fp16" if device_type == "cuda" else "none"
    if amp not in AMP_CHOICES:
        raise UsageError(f"--amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "fp16" and device_type != "cuda":
        raise UsageError(f"--amp fp16 needs a CUDA device (here: {device_type}); use --amp bf16 or --amp none "
                         "on CPU")
    return amp


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for fp16/bf16, a no-op context for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class NativeScalerWithGradNormCount:
    """Backward with optional fp16 loss scaling; on update steps: unscale, clip, step, return the norm."""

    def __init__(self, device: torch.device | str = "cuda", enabled: bool = True) -> None:
        self._scaler = torch.amp.GradScaler(torch.device(device).type, enabled=enabled)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad: float | None = None,
                 parameters: Iterable[torch.nn.Parameter] | None = None, create_graph: bool = False,
                 update_grad: bool = True) -> torch.Tensor | None:
        """Backward; on ``update_grad`` steps also step and return the global gradient norm (before
        clipping; non-finite when fp16 scaling overflowed and the step was skipped)."""
        self._scaler.scale(loss).backward(create_graph=create_graph)
        if not update_grad:
            return None
        self._scaler.unscale_(optimizer)
        params = [p for p in (parameters or []) if p.grad is not None]
        if clip_grad is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm

    def state_dict(self) -> dict:
        return self._scaler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._scaler.load_state_dict(state_dict)
