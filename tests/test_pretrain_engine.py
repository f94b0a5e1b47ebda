"""Pre-training engine: lr and momentum schedules, EMA by name, shared non-finite policy (spec 3.9, 3.10)."""
from __future__ import annotations

import argparse
import math
import os
import socket

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsvfm.engine_pretrain import EMATarget, train_one_epoch
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.args import set_effective_lr
from fsvfm.util.loss_contrastive import build_cl_loss
from fsvfm.util.lr_sched import adjust_learning_rate, cosine_scheduler
from fsvfm.util.train_step import MAX_CONSECUTIVE_SKIPS, reduce_losses


class FakeOnline(nn.Module):
    """Stands in for FSFMViT: the losses depend on the image values (NaN images give NaN losses)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, imgs, img_mask, sfr_mask, mask_ratio):
        feat = imgs.flatten(1)[:, :4] * self.w
        loss = (feat ** 2).mean()
        return loss, loss * 0, F.normalize(feat, dim=-1), None, img_mask


class FakeTarget(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4), requires_grad=False)

    def forward(self, imgs):
        return F.normalize(imgs.flatten(1)[:, :4] + self.w, dim=-1)


def _args(**kw) -> argparse.Namespace:
    base = dict(lr=0.0, min_lr=0.0, warmup_epochs=1, epochs=3, accum_iter=1, clip_grad=1.0, print_freq=100,
                mask_ratio=0.75, weight_sfr=0.007, weight_cl=0.1, amp="none")
    base.update(kw)
    return argparse.Namespace(**base)


def _batches(n: int, nan_at: tuple[int, ...] = ()) -> list[dict]:
    out = []
    for i in range(n):
        img = torch.full((2, 3, 4, 4), float("nan")) if i in nan_at else torch.randn(2, 3, 4, 4)
        out.append({"image": img, "img_mask": torch.ones(2, 4), "specific_facial_region_mask": torch.zeros(2, 4),
                    "num_skipped": torch.tensor(1)})
    return out


def _run_epoch(batches, args, epoch=1, momentum=None, writer=None):
    online, target = FakeOnline(), FakeTarget()
    opt = torch.optim.AdamW(online.parameters(), lr=args.lr)
    momentum = momentum if momentum is not None else cosine_scheduler(0.9, 1.0, args.epochs, len(batches))
    stats = train_one_epoch(online, target, EMATarget(online, target), batches, opt,
                            NativeScalerWithGradNormCount("cpu", enabled=False), build_cl_loss("SimSiam"),
                            momentum, epoch, torch.device("cpu"), args, writer)
    return stats, online, target


def test_effective_lr_and_schedule_hand_computed():
    args = argparse.Namespace(lr=None, blr=1.5e-4, batch_size=256, accum_iter=4, min_lr=0.0, warmup_epochs=40,
                              epochs=600)
    assert set_effective_lr(args, world_size=4) == 4096 and args.lr == pytest.approx(2.4e-3)
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))]}])
    for epoch, expected in [(0, 0.0), (20, 1.2e-3), (40, 2.4e-3), (320, 1.2e-3), (600, 0.0),
                            (180, 2.4e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))]:
        assert adjust_learning_rate(opt, epoch, args) == pytest.approx(expected, abs=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_momentum_schedule_hand_computed():
    m = cosine_scheduler(0.996, 1.0, epochs=2, niter_per_ep=5)
    assert len(m) == 10
    assert m[0] == pytest.approx(0.996)
    assert m[5] == pytest.approx(0.998)
    assert m[9] == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi * 0.9)))


class _Wrapper(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_ema_matches_unprefixed_names_through_a_wrapper():
    online, target = FakeOnline(), FakeTarget()
    ema = EMATarget(nn.DataParallel(online), target)  # names of the unwrapped modules are used
    assert ema.names == ["w"]
    ema.update(0.9)
    assert torch.allclose(target.w, torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="no online counterpart"):
        EMATarget(_Wrapper(online), target)  # a wrapper that unwrap_model does not know: module.w


def test_lr_per_iteration_with_accumulation_and_tensorboard_x():
    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    args = _args(lr=1e-3, warmup_epochs=2, epochs=4, accum_iter=2)
    writer = Writer()
    stats, *_ = _run_epoch(_batches(4), args, epoch=1, writer=writer)
    lrs = [(v, s) for t, v, s in writer.calls if t == "lr"]
    # lr is set at iterations 0 and 2 (epoch 1.0 and 1.5), logged on update steps 1 and 3
    assert lrs == [(pytest.approx(0.5e-3), 1250), (pytest.approx(0.75e-3), 1750)]
    assert [t for t, _, _ in writer.calls].count("train_loss") == 2
    assert stats["skipped_files"] == 4 and stats["skipped_batches"] == 0


def test_ema_uses_global_step_momentum():
    args = _args(epochs=3)
    momentum = cosine_scheduler(0.9, 1.0, 3, 4)
    _, online, target = _run_epoch(_batches(4), args, epoch=1, momentum=momentum)
    # lr = 0 keeps the online weights at 1; the target starts at 0, so t = 1 - prod(m_i), i = 4..7
    expected = 1 - torch.tensor(momentum[4:8]).prod()
    assert torch.allclose(online.w, torch.ones(4))
    assert torch.allclose(target.w, expected.float().expand(4))


def test_non_finite_batch_is_skipped_without_ema():
    args = _args(epochs=3)
    momentum = cosine_scheduler(0.9, 1.0, 3, 4)
    stats, _, target = _run_epoch(_batches(4, nan_at=(2,)), args, epoch=1, momentum=momentum)
    assert stats["skipped_batches"] == 1 and math.isfinite(stats["loss"])
    expected = 1 - momentum[4] * momentum[5] * momentum[7]
    assert torch.allclose(target.w, torch.full((4,), float(expected)))


def test_too_many_consecutive_non_finite_batches_abort():
    n = MAX_CONSECUTIVE_SKIPS + 3
    with pytest.raises(FloatingPointError, match=f"{MAX_CONSECUTIVE_SKIPS} consecutive"):
        _run_epoch(_batches(n, nan_at=tuple(range(1, n))), _args())


def _reduce_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    value = float("nan") if rank == 1 else 2.0
    losses = {k: torch.tensor(value if k == "loss_cl" else 1.0 + rank) for k in
              ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")}
    means, skip = reduce_losses(losses)
    results[rank] = (means["loss"], skip)
    torch.distributed.destroy_process_group()


def test_non_finite_decision_is_shared_by_all_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Manager().dict()
    torch.multiprocessing.start_processes(_reduce_worker, args=(port, results), nprocs=2, start_method="spawn")
    assert results[0] == (1.5, True) and results[1] == (1.5, True)
