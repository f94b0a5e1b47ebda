"""The fine-tuning engine against hand-computed updates: accumulation, clipping, grad-norm logging,
loss-hook components, the shared non-finite skip, ``no_sync`` on micro-steps and bf16 autocast."""
from __future__ import annotations

import argparse
import contextlib
import math

import pytest
import torch

from fsvfm.engine_finetune import train_one_epoch
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.errors import UsageError
from fsvfm.util.lr_sched import lr_at
from fsvfm.util.train_step import SkipStreak, StepConfig, TrainingDivergedError


class Linear(torch.nn.Module):
    """``w`` [2], zero; output = ``(x * w).sum()``, so d output / d w = sum of the batch rows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.no_sync_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum()

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_calls += 1
        yield


def _args(**kw) -> argparse.Namespace:
    # constant lr 1 (warm-up 0, lr == min_lr) so SGD moves w by exactly -gradient
    base = dict(amp="none", accum_iter=1, clip_grad=None, print_freq=100, lr=1.0, min_lr=1.0, warmup_epochs=0,
                epochs=1)
    return argparse.Namespace(**{**base, **kw})


def _train(model, hook, loader, optimizer, epoch, scaler, args, **kw):
    return train_one_epoch(model, hook, loader, optimizer, torch.device("cpu"), epoch, scaler,
                           StepConfig.from_args(args), lr_at=lambda t: lr_at(t, args), **kw)


def _plain_loss(model, samples, targets, *, labels):
    return model(samples), {}


def _run(batches, args, loss_fn=_plain_loss, writer=None):
    model = Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = [(torch.tensor([x], dtype=torch.float32), torch.tensor([0])) for x in batches]
    stats = _train(model, loss_fn, loader, optimizer, 0, NativeScalerWithGradNormCount("cpu", enabled=False), args,
                   log_writer=writer)
    return model, stats


def test_accumulation_clipping_and_grad_norm():
    # window 1: (x1 + x2) / 2 = (1.5, 2) -> norm 2.5, clipped to 0.5 -> (0.3, 0.4)
    # window 2: (x3 + x4) / 2 = (0, 1)   -> norm 1.0, clipped to 0.5 -> (0, 0.5)
    model, stats = _run([[3.0, 0.0], [0.0, 4.0], [0.0, 2.0], [0.0, 0.0]], _args(accum_iter=2, clip_grad=0.5))
    assert torch.allclose(model.w.detach(), torch.tensor([-0.3, -0.9]))
    assert stats["grad_norm"] == pytest.approx((2.5 + 1.0) / 2)
    assert model.no_sync_calls == 2  # micro-steps 0 and 2 skip the DDP gradient sync
    unclipped, _ = _run([[3.0, 0.0], [0.0, 4.0]], _args(accum_iter=2))
    assert torch.allclose(unclipped.w.detach(), torch.tensor([-1.5, -2.0]))


def test_loss_hook_components_are_logged():
    class Writer:
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append((tag, round(float(value), 6), step))

    def hook(model, samples, targets, *, labels):
        out = model(samples)
        extra = samples.sum() * 0 + 2.0
        return out + 0.5 * extra, {"cls_loss": out.detach(), "con_loss": extra.detach()}

    writer = Writer()
    _, stats = _run([[1.0, 1.0], [1.0, 1.0]], _args(), loss_fn=hook, writer=writer)
    # step 1: w = 0 -> cls 0; w = (-1, -1) after it -> step 2 cls -2; loss = cls + 1
    assert stats["cls_loss"] == pytest.approx(-1.0) and stats["con_loss"] == pytest.approx(2.0)
    assert stats["loss"] == pytest.approx(0.0)
    assert ("cls_loss", -2.0, 500) in writer.tags and ("con_loss", 2.0, 0) in writer.tags
    assert {t for t, _, _ in writer.tags} == {"loss", "cls_loss", "con_loss", "lr"}


def test_non_finite_batch_is_skipped_and_counted():
    def hook(model, samples, targets, *, labels):
        out = model(samples)
        return (out * math.nan if samples[0, 0] < 0 else out), {}

    model, stats = _run([[1.0, 0.0], [-1.0, 5.0], [0.0, 2.0]], _args(), loss_fn=hook)
    assert stats["skipped_batches"] == 1
    assert torch.allclose(model.w.detach(), torch.tensor([-1.0, -2.0]))  # the NaN batch left no trace


def test_bf16_autocast_on_cpu():
    seen = []

    def hook(model, samples, targets, *, labels):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     torch.nn.functional.linear(samples, torch.ones(1, 2)).dtype))
        return model(samples), {}

    _run([[1.0, 0.0]], _args(amp="bf16"), loss_fn=hook)
    assert seen == [(True, torch.bfloat16, torch.bfloat16)]


def test_consecutive_skips_are_counted_across_epochs():
    """The 20-in-a-row stop counts non-finite batches over epoch boundaries (one ``SkipStreak`` per run):
    11 at the end of epoch 0 plus 9 at the start of epoch 1 reach it at iteration 8 of epoch 1."""
    def hook(model, samples, targets, *, labels):
        out = model(samples)
        return (out * math.nan if samples[0, 0] < 0 else out), {}

    model = Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler, streak = NativeScalerWithGradNormCount("cpu", enabled=False), SkipStreak()

    def epoch(e, rows):
        loader = [(torch.tensor([x], dtype=torch.float32), torch.tensor([0])) for x in rows]
        return _train(model, hook, loader, optimizer, e, scaler, _args(epochs=2), streak=streak)

    stats = epoch(0, [[1.0, 0.0]] + [[-1.0, 0.0]] * 11)
    assert stats["skipped_batches"] == 11 and streak.count == 11
    with pytest.raises(TrainingDivergedError, match=r"20 consecutive batches \(last: epoch 1 iteration 8"):
        epoch(1, [[-1.0, 0.0]] * 12)


@pytest.mark.parametrize("flag", ["accum_iter", "print_freq"])
def test_step_config_refuses_a_window_or_interval_below_one(flag):
    """``--accum_iter 0`` or ``--print_freq 0`` is a usage mistake (one line), refused before any work."""
    args = argparse.Namespace(amp="none", accum_iter=1, clip_grad=None, print_freq=10)
    setattr(args, flag, 0)
    with pytest.raises(UsageError, match=f"^--{flag} must be at least 1, got 0$"):
        StepConfig.from_args(args)
    assert StepConfig.from_args(argparse.Namespace(amp="none", accum_iter=2, clip_grad=None, print_freq=1)) \
        == StepConfig("none", 2, None, 1)
