"""Speed switches of the training and scoring programs: precision default, fused AdamW, torch.compile, SDPA,
inference preparation.

Each switch checks what the device and this torch build support and falls back (with one log line)
instead of failing, so the same command line works on a CPU, an old GPU and an H100/H200.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
from collections.abc import Iterable

import torch
from timm.layers import Attention

from fsvfm.util.amp import autocast, resolve_amp

logger = logging.getLogger(__name__)


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """``--compile`` and ``--fused_optimizer/--no_fused_optimizer``."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the online and target networks (eager fallback when unavailable)")
    parser.add_argument("--fused_optimizer", dest="fused_optimizer", action="store_true", default=None,
                        help="fused AdamW kernel (default: on for CUDA, off elsewhere)")
    parser.add_argument("--no_fused_optimizer", dest="fused_optimizer", action="store_false")


def default_amp(amp: str | None, device: torch.device | str) -> str:
    """``--amp`` for training: bf16 on CUDA cards that support it when not given, else ``resolve_amp``.

    bf16 has fp32's exponent range, so it needs no loss scaling (no host sync per step for the
    scaler) and cannot overflow where fp16 does.
    """
    device = torch.device(device)
    if amp in (None, "", "auto") and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return resolve_amp(amp, device)


def build_adamw(param_groups: Iterable, lr: float, device: torch.device | str, fused: bool | None = None,
                betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW, with the fused kernel (one launch for all parameters) on CUDA unless ``fused=False``.

    A fused AdamW also skips a step on the device when ``optimizer.found_inf`` is set (the
    protocol of ``torch.amp.GradScaler``), which lets the engine drop a non-finite step without a
    host sync.
    """
    if fused is None:
        fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=bool(fused))


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """True when ``optimizer.step`` honours a ``found_inf`` tensor (fused Adam/AdamW)."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why torch.compile (inductor) cannot run on ``device`` here, or None when it can."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "Triton is not importable"
        return None if has_triton() else "Triton is not installed"
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "no C++ compiler for inductor's CPU backend"
    return None


def maybe_compile(module: torch.nn.Module, enabled: bool, device: torch.device | str,
                  backend: str = "inductor", options: dict | None = None) -> torch.nn.Module:
    """``torch.compile(module, backend=backend)`` when ``enabled`` and supported, else ``module`` (logged).

    Compilation happens at the first call; a graph that fails to compile there runs eagerly
    (``torch._dynamo.config.suppress_errors``) instead of stopping training. The returned module
    shares parameters with ``module``; save and average the un-compiled one.
    """
    if not enabled:
        return module
    reason = compile_unavailable_reason(device)
    if reason is not None:
        logger.warning("--compile: %s; running eagerly", reason)
        return module
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True
    return torch.compile(module, backend=backend, options=options)


def set_fused_attention(model: torch.nn.Module, enabled: bool) -> int:
    """Switch timm attention blocks between ``F.scaled_dot_product_attention`` (fused flash /
    memory-efficient kernels) and the eager softmax(QK^T)V; returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, Attention)]
    for m in blocks:
        m.fused_attn = enabled
    return len(blocks)


def fused_attention_blocks(model: torch.nn.Module) -> tuple[int, int]:
    """``(fused, total)`` timm attention blocks of ``model``."""
    blocks = [m for m in model.modules() if isinstance(m, Attention)]
    return sum(bool(m.fused_attn) for m in blocks), len(blocks)


def prepare_inference(model: torch.nn.Module, device: torch.device | str, *, amp: str = "none",
                      compile: bool = False) -> torch.nn.Module:
    """``model`` on ``device`` for scoring only: eval mode, no parameter gradients, fused SDPA attention,
    and ``torch.compile`` when asked (eager fallback when unavailable). Run it under
    ``inference_context(device, amp)``.

    Fused attention computes the same fp32 values as the eager softmax(QK^T)V up to rounding (< 1e-5 on
    the logits) without materialising the attention matrix. ``amp="bf16"`` on the CPU also stores the
    weights in bf16: autocast would otherwise convert every weight again for every batch. Compile is
    opt-in: on a 2-core CPU its first batch took 95 s for a few per cent afterwards (README, Benchmarks).
    """
    model = model.to(device).eval().requires_grad_(False)
    if amp == "bf16" and torch.device(device).type == "cpu":
        model = model.to(torch.bfloat16)
    set_fused_attention(model, True)
    # freezing: weights become constants, so inductor folds and pre-packs them (inference only)
    return maybe_compile(model, compile, device, options={"freezing": True})


def inference_context(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """``torch.inference_mode`` (no autograd bookkeeping at all) with ``autocast(device, amp)``."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast(device, amp))
    return stack
