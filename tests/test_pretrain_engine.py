"""Pre-training engine: lr and momentum schedules, EMA by name, shared non-finite policy (spec 3.9, 3.10)."""
from __future__ import annotations

import argparse
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsvfm.engine_pretrain import EMATarget, forward_losses, pretrain_loss, train_one_epoch, train_step
from fsvfm.losses import build_cl_loss
from fsvfm.util import dist
from fsvfm.util.accel import build_adamw, supports_device_skip
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.args import set_effective_lr
from fsvfm.util.errors import UserError
from fsvfm.util.lr_sched import lr_at, momentum_at, set_learning_rate
from fsvfm.util.train_step import (
    MAX_CONSECUTIVE_SKIPS,
    SkipStreak,
    StepConfig,
    TrainingDivergedError,
    reduce_losses_on_device,
)
from tests.helpers import free_port


class FakeOnline(nn.Module):
    """Stands in for FSFMViT: the losses depend on the image values (NaN images give NaN losses)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, imgs, img_mask, sfr_mask, mask_ratio=None):
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
        out.append({"image": img, "img_mask": torch.ones(2, 4), "specific_facial_region_mask": torch.zeros(2, 4)})
    return out


def _loss(args):
    return pretrain_loss(build_cl_loss("SimSiam"), args.weight_sfr, args.weight_cl)


def _run_epoch(batches, args, epoch=1, momentum=None, writer=None, fused=False, streak=None):
    online, target = FakeOnline(), FakeTarget()
    opt = build_adamw(online.parameters(), args.lr, "cpu", fused=fused)
    momentum = momentum if momentum is not None else momentum_at(0.9, args.epochs)
    stats = train_one_epoch(online, target, EMATarget(online, target), batches, opt,
                            NativeScalerWithGradNormCount("cpu", enabled=False), _loss(args), epoch,
                            torch.device("cpu"), StepConfig.from_args(args), lr_at=lambda t: lr_at(t, args),
                            momentum_at=momentum, log_writer=writer, streak=streak)
    return stats, online, target, opt


def _old_momentum(base: float, epochs: int, niter: int) -> list[float]:
    """The per-iteration EMA momentum array the pre-training engine used to take, by hand."""
    n = epochs * niter
    return [1.0 + 0.5 * (base - 1.0) * (1 + math.cos(math.pi * i / n)) for i in range(n)]


def test_effective_lr_and_schedule_hand_computed():
    args = argparse.Namespace(lr=None, blr=1.5e-4, batch_size=256, accum_iter=4, min_lr=0.0, warmup_epochs=40,
                              epochs=600)
    assert set_effective_lr(args, world_size=4) == 4096 and args.lr == pytest.approx(2.4e-3)
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))]}])
    for epoch, expected in [(0, 0.0), (20, 1.2e-3), (40, 2.4e-3), (320, 1.2e-3), (600, 0.0),
                            (180, 2.4e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))]:
        assert set_learning_rate(opt, lr_at(epoch, args)) == pytest.approx(expected, abs=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_momentum_schedule_hand_computed():
    niter = 5
    m = [momentum_at(0.996, 2)(i / niter) for i in range(2 * niter)]  # global step i at epoch i / len(loader)
    assert m[0] == pytest.approx(0.996)
    assert m[5] == pytest.approx(0.998)
    assert m[9] == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi * 0.9)))
    assert m == pytest.approx(_old_momentum(0.996, 2, niter), abs=1e-12)
    # any epoch count and loader length: the old array's step i is the callable at epoch i / len(loader)
    assert [momentum_at(0.9, 3)(e + i / 4) for e in range(3) for i in range(4)] == pytest.approx(
        _old_momentum(0.9, 3, 4), abs=1e-12)


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


def test_pretrain_loss_weights_and_the_mask_as_collated():
    """The hook holds the weights: L = 1 + 0.5 x 2 + 0.25 x 3; the model gets the batch's own mask tensor
    (on the host, where it reads its count), the target the full view only."""
    seen = {}

    def online(imgs, img_mask, sfr_mask):
        seen["mask"] = img_mask
        return torch.tensor(1.0), torch.tensor(2.0), F.normalize(torch.ones(2, 4), dim=-1), None, img_mask

    def target(imgs):
        seen["target_grad"] = torch.is_grad_enabled()
        return F.normalize(torch.ones(2, 4), dim=-1)

    batch = _batches(1)[0]
    losses = forward_losses(online, target, batch, pretrain_loss(lambda pz: torch.tensor(3.0), 0.5, 0.25),
                            torch.device("cpu"), "none")
    assert {k: float(v) for k, v in losses.items()} == {"loss": 2.75, "loss_rec_all": 1.0, "loss_rec_sfr": 2.0,
                                                         "loss_cl": 3.0}
    assert seen["mask"] is batch["img_mask"] and seen["target_grad"] is False


def test_ddp_wrap_without_moving_inputs_has_no_device_ids(monkeypatch):
    """DDP with ``device_ids`` copies every input to the device before the model sees it; pre-training
    wraps without them so the collate's host mask reaches the model, which reads its count there."""
    made = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **kw: made.append(kw) or model)
    args, model = argparse.Namespace(distributed=True, device="cuda", gpu=3), nn.Linear(1, 1)
    assert dist.wrap_model(model, args) is model and dist.wrap_model(model, args, move_inputs=False) is model
    assert [kw["device_ids"] for kw in made] == [[3], None]


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
    assert stats["skipped_batches"] == 0


def test_ema_uses_global_step_momentum():
    args = _args(epochs=3)
    momentum = _old_momentum(0.9, 3, 4)
    _, online, target, _ = _run_epoch(_batches(4), args, epoch=1, momentum=momentum_at(0.9, 3))
    # lr = 0 keeps the online weights at 1; the target starts at 0, so t = 1 - prod(m_i), i = 4..7
    expected = 1 - torch.tensor(momentum[4:8]).prod()
    assert torch.allclose(online.w, torch.ones(4))
    assert torch.allclose(target.w, expected.float().expand(4))


def test_non_finite_batch_is_skipped_without_ema():
    args = _args(epochs=3)
    momentum = _old_momentum(0.9, 3, 4)
    stats, _, target, _ = _run_epoch(_batches(4, nan_at=(2,)), args, epoch=1, momentum=momentum_at(0.9, 3))
    assert stats["skipped_batches"] == 1 and math.isfinite(stats["loss"])
    expected = 1 - momentum[4] * momentum[5] * momentum[7]
    assert torch.allclose(target.w, torch.full((4,), float(expected)))


def test_too_many_consecutive_non_finite_batches_abort():
    n = MAX_CONSECUTIVE_SKIPS + 3
    with pytest.raises(FloatingPointError, match=f"{MAX_CONSECUTIVE_SKIPS} consecutive") as err:
        _run_epoch(_batches(n, nan_at=tuple(range(1, n))), _args())
    assert isinstance(err.value, UserError)  # the entry points print it as one line


def test_consecutive_skips_are_counted_across_epochs():
    """Epochs of 12 batches, the last 11 non-finite, then an epoch of 12 non-finite ones: each epoch alone
    stays under the limit; the run of 11 + 9 reaches it at iteration 8 of the second epoch."""
    streak = SkipStreak()
    stats, *_ = _run_epoch(_batches(12, nan_at=tuple(range(1, 12))), _args(), epoch=0, streak=streak)
    assert stats["skipped_batches"] == 11 and streak.count == 11
    with pytest.raises(TrainingDivergedError, match=r"20 consecutive batches \(last: epoch 1 iteration 8"):
        _run_epoch(_batches(12, nan_at=tuple(range(12))), _args(), epoch=1, streak=streak)
    fresh = SkipStreak()  # a finite batch ends the run of skips
    _run_epoch(_batches(12, nan_at=tuple(range(11))), _args(), epoch=0, streak=fresh)
    assert fresh.count == 0


def _reduce_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    value = float("nan") if rank == 1 else 2.0
    losses = {k: torch.tensor(value if k == "loss_cl" else 1.0 + rank) for k in
              ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")}
    _, sums, skip = reduce_losses_on_device(losses)
    results[rank] = (float(sums[0]) / 2, bool(skip))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_non_finite_decision_is_shared_by_all_ranks():
    port = free_port()
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Manager().dict()
    torch.multiprocessing.start_processes(_reduce_worker, args=(port, results), nprocs=2, start_method="spawn")
    assert results[0] == (1.5, True) and results[1] == (1.5, True)


def test_ema_skip_flag_is_bit_identical_to_the_scalar_update():
    online, target = FakeOnline(), FakeTarget()
    online.w.data = torch.randn(4)
    ema = EMATarget(online, target)
    expected = torch.lerp(target.w.detach().clone(), online.w.detach(), 1.0 - 0.9973)
    ema.update(0.9973, skip=torch.tensor(False))
    assert torch.equal(target.w, expected)
    ema.update(0.5, skip=torch.tensor(True))
    assert torch.equal(target.w, expected)


def test_meters_hold_every_finite_iteration_across_print_intervals():
    args = _args(print_freq=2)
    batches = _batches(5, nan_at=(3,))
    stats, *_ = _run_epoch(batches, args)
    per_batch = [float((b["image"].flatten(1)[:, :4] ** 2).mean()) for i, b in enumerate(batches) if i != 3]
    assert stats["loss_rec_all"] == pytest.approx(sum(per_batch) / 4, rel=1e-12)
    assert stats["skipped_batches"] == 1


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_micro_batch_drops_its_whole_accumulation_window(fused):
    args = _args(lr=1e-2, warmup_epochs=0, accum_iter=2)
    stats, online, _, opt = _run_epoch(_batches(4, nan_at=(0,)), args, fused=fused)
    assert supports_device_skip(opt) == fused
    assert stats["skipped_batches"] == 1
    assert [int(s["step"]) for s in opt.state.values()] == [1]  # only the second window stepped
    assert torch.isfinite(online.w).all() and not torch.equal(online.w, torch.ones(4))


def test_device_side_skip_equals_the_host_decision_bit_for_bit():
    """A fused AdamW drops a non-finite step on the device exactly as the host-synced path does."""
    args = _args(lr=1e-2)
    results = []
    for device_skip in (False, True):
        torch.manual_seed(0)
        online, target = FakeOnline(), FakeTarget()
        ema, opt = EMATarget(online, target), build_adamw(online.parameters(), 1e-2, "cpu", fused=True)
        scaler, cl = NativeScalerWithGradNormCount("cpu", enabled=False), _loss(args)
        rows = []
        for batch in _batches(3, nan_at=(1,)):
            row, _ = train_step(online, target, ema, batch, opt, scaler, cl, StepConfig.from_args(args),
                                torch.device("cpu"), 0.9, device_skip=device_skip)
            opt.zero_grad(set_to_none=True)
            rows.append(row)
        results.append((online.w.detach().clone(), target.w.detach().clone(),
                        {k: v.clone() for k, v in opt.state[online.w].items()}, torch.stack(rows)))
    (w0, t0, s0, r0), (w1, t1, s1, r1) = results
    assert torch.equal(w0, w1) and torch.equal(t0, t1) and int(s1["step"]) == 2
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert torch.equal(r0.nan_to_num(), r1.nan_to_num())  # this rank's losses are NaN in the bad row
    assert r1[:, 8].tolist() == [0.0, 1.0, 0.0]


def test_grad_norm_is_read_back_at_the_print_interval():
    """The scaler's norm of each step stays on the device in the step rows; the meters get the
    finite ones (the non-finite batch's step is dropped) when the rows are read back."""
    args = _args(print_freq=2)
    batches = _batches(5, nan_at=(3,))
    stats, *_ = _run_epoch(batches, args, momentum=lambda t: 1.0)  # lr 0 and momentum 1: nothing moves
    norms = []
    for i, b in enumerate(batches):
        if i == 3:
            continue
        online, target = FakeOnline(), FakeTarget()
        forward_losses(online, target, b, _loss(args), torch.device("cpu"), "none")["loss"].backward()
        norms.append(float(online.w.grad.norm()))
    assert stats["grad_norm"] == pytest.approx(sum(norms) / 4, rel=1e-6)
    assert stats["skipped_batches"] == 1


class _SlowBatches(list):
    """Batches that each take ``seconds`` of the fake clock ``now`` to load."""

    def __init__(self, batches, now: list[float], seconds: float) -> None:
        super().__init__(batches)
        self.now, self.seconds = now, seconds

    def __iter__(self):
        for batch in super().__iter__():
            self.now[0] += self.seconds
            yield batch


@pytest.mark.parametrize("seconds, logged", [(30.0, [0, 2, 4, 5]), (1.0, [0, 5]), (61.0, [0, 1, 2, 3, 4, 5])])
def test_epoch_logs_at_least_every_interval_whatever_print_freq(monkeypatch, caplog, seconds, logged):
    """--print_freq 1000 over 6 slow steps: a line (with fresh meters) as soon as 60 s have passed since the last."""
    from fsvfm.util import meters
    from fsvfm.util.train_step import StepLog
    now = [0.0]
    monkeypatch.setattr(meters, "clock", lambda: now[0])
    flushed = []
    real_flush = StepLog.flush

    def flush(self):
        flushed.extend(it for _, it, _, _ in self.meta[-1:])
        real_flush(self)
    monkeypatch.setattr(StepLog, "flush", flush)
    with caplog.at_level("INFO", logger="fsvfm.util.meters"):
        _run_epoch(_SlowBatches(_batches(6), now, seconds), _args(print_freq=1000))
    lines = [r.args[2] for r in caplog.records if r.name == "fsvfm.util.meters" and "eta" in r.msg]
    assert lines == logged and flushed == logged
