"""Contrastive losses against hand-computed values (spec 3.8.2, 7.4)."""
from __future__ import annotations

import math

import pytest
import torch

from fsvfm.losses import (
    BYOLLoss,
    InfoNCELoss,
    MOCOV3Loss,
    RealAnchorConLoss,
    SimSiamLoss,
    SupConLoss,
    build_cl_loss,
)

P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
PZ = torch.stack([P, Z], dim=1)  # [N=2, views=2, D=2]


def test_simsiam_is_minus_half_mean_cosine():
    assert SimSiamLoss()(PZ).item() == pytest.approx(-0.5 * (1 + 0) / 2)


def test_byol_is_mean_two_minus_two_dot():
    assert BYOLLoss()(PZ).item() == pytest.approx((0 + 2) / 2)


def test_infonce_all_and_positive():
    # logits = P Z^T / 0.1 = [[10, 10], [0, 0]]; both rows have CE = log 2.
    assert InfoNCELoss()(PZ).item() == pytest.approx(0.2 * math.log(2), rel=1e-6)
    # positive: off-diagonal logits zeroed -> [[10, 0], [0, 0]].
    expected = 0.2 * (math.log(1 + math.exp(-10)) + math.log(2)) / 2
    assert InfoNCELoss(contrast_sample="positive")(PZ).item() == pytest.approx(expected, rel=1e-6)


def test_mocov3_renormalises_both_views():
    scaled = torch.stack([P * torch.tensor([[2.0], [3.0]]), Z * 5], dim=1)
    assert MOCOV3Loss()(scaled).item() == pytest.approx(0.2 * math.log(2), rel=1e-6)


def test_simclr_nt_xent_two_views():
    f = torch.stack([P, P], dim=1).double()  # two identical views; float64: the value is ~1e-4
    # anchor row after max-shift: [0, -10, 0, -10]; denominator excludes itself.
    expected = math.log(1 + 2 * math.exp(-10) + 1e-6)
    assert build_cl_loss("SimCLR")(f).item() == pytest.approx(expected, rel=1e-5)


def test_supcon_with_labels_and_real_anchor():
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # [3, 1 view, 2]
    expected = 2 / 3 * math.log(1 + math.exp(-2) + 1e-6)  # tau 0.5: two anchors with one positive each
    sup = SupConLoss(temperature=0.5, base_temperature=0.5)
    assert sup(f, labels=torch.tensor([0, 0, 1])).item() == pytest.approx(expected, rel=1e-5)
    real = RealAnchorConLoss(temperature=0.5, base_temperature=0.5, pos_class_index=1)
    assert real(f, torch.tensor([1, 1, 0])).item() == pytest.approx(expected, rel=1e-5)
    assert real(f, torch.tensor([0, 0, 0])).item() == 0.0
    with pytest.raises(ValueError, match="not both"):
        sup(f, labels=torch.tensor([0, 0, 1]), mask=torch.eye(3))


def test_shapes_and_names_are_checked():
    with pytest.raises(ValueError, match="at least 3-D"):
        SimSiamLoss()(P)
    # rank > 3 is flattened per view
    assert SimSiamLoss()(PZ.reshape(2, 2, 1, 2)).item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="unknown --cl_loss"):
        build_cl_loss("VICReg")
    with pytest.raises(ValueError, match="contrast_sample"):
        build_cl_loss("InfoNCE", "negative")
    for name in ("SimSiam", "BYOL", "InfoNCE", "MOCOv3", "SimCLR"):
        assert torch.isfinite(build_cl_loss(name)(PZ))


def test_target_view_gets_no_gradient():
    p = P.clone().requires_grad_()
    z = Z.clone().requires_grad_()
    SimSiamLoss()(torch.stack([p, z], dim=1)).backward()
    assert p.grad.abs().sum() > 0 and (z.grad is None or not z.grad.any())


def _real_anchor_by_hand(x: torch.Tensor, labels: list[int], real: int, tau: float, tau_b: float) -> float:
    """Spec 7.4 with one view, written as loops: real anchors pull other reals, push every other sample."""
    n = len(labels)
    reals = [i for i in range(n) if labels[i] == real]
    if len(reals) < 2:
        return 0.0
    total = 0.0
    for i in reals:
        s = [float(x[i] @ x[j]) / tau for j in range(n)]
        s = [v - max(s) for v in s]  # the row-max shift (self included)
        log_denominator = math.log(sum(math.exp(s[a]) for a in range(n) if a != i) + 1e-6)
        total += -sum(s[p] - log_denominator for p in reals if p != i) / (len(reals) - 1)
    return tau / tau_b * total / n  # fake anchors count in the average with 0


@pytest.mark.parametrize("real", [0, 1])
@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_real_anchor_loss_against_hand_loop(real, tau):
    x = torch.nn.functional.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    labels = [1, 0, 1, 1, 0, 1]
    expected = _real_anchor_by_hand(x, labels, real, tau, 0.07)
    loss = RealAnchorConLoss(temperature=tau, pos_class_index=real)(x[:, None], torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_real_anchor_loss_without_real_pairs_is_zero_and_keeps_the_graph():
    x = torch.randn(4, 1, 8, requires_grad=True)
    loss_fn = RealAnchorConLoss(pos_class_index=1)
    loss = loss_fn(x, torch.tensor([0, 0, 0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    assert loss_fn(x, torch.tensor([0, 1, 0, 0])).item() == 0.0  # one real sample: no positive pair
    with pytest.raises(ValueError, match="integer class labels"):
        loss_fn(x, torch.tensor([[0.9, 0.1]] * 4))
    with pytest.raises(TypeError):
        RealAnchorConLoss()  # the real index must come from the task's labels (A1)
