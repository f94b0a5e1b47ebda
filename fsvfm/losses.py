"""Contrastive losses on stacked views ``[N, n_views, D]`` (online first, target second).

Formulas follow the original. The second view is the EMA target and carries
no gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _as_views(features: torch.Tensor) -> torch.Tensor:
    """Check/flatten features to [N, V, D]."""
    if features.dim() < 3:
        raise ValueError(f"features must be [N, n_views, ...] (at least 3-D), got shape {tuple(features.shape)}")
    return features.reshape(features.shape[0], features.shape[1], -1)


def _two_views(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = _as_views(features)
    if f.shape[1] != 2:
        raise ValueError(f"this loss needs exactly 2 views, got {f.shape[1]}")
    return f[:, 0], f[:, 1].detach()


class SimSiamLoss(nn.Module):
    """``-0.5 * mean_i cos(p_i, z_i)``; range [-0.5, 0.5]."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p, z = _two_views(features)
        return -0.5 * F.cosine_similarity(p, z, dim=-1).mean()


class BYOLLoss(nn.Module):
    """``mean_i (2 - 2 <p_i, z_i>)`` (squared distance of unit vectors)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p, z = _two_views(features)
        return (2 - 2 * (p * z).sum(dim=-1)).mean()


class InfoNCELoss(nn.Module):
    """``2 tau * CE(p z^T / tau, arange(N))``; ``contrast_sample='positive'`` zeroes off-diagonal logits."""

    def __init__(self, temperature: float = 0.1, contrast_sample: str = "all") -> None:
        super().__init__()
        if contrast_sample not in ("all", "positive"):
            raise ValueError(f"contrast_sample must be 'all' or 'positive', got {contrast_sample!r}")
        self.temperature = temperature
        self.contrast_sample = contrast_sample

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p, z = _two_views(features)
        logits = p @ z.T / self.temperature
        if self.contrast_sample == "positive":
            logits = logits * torch.eye(len(p), device=p.device, dtype=logits.dtype)
        labels = torch.arange(len(p), device=p.device)
        return 2 * self.temperature * F.cross_entropy(logits, labels)


class MOCOV3Loss(nn.Module):
    """MoCo v3: re-normalise both views, ``2 tau * CE(p z^T / tau, arange(N))``."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p, z = _two_views(features)
        logits = F.normalize(p, dim=1) @ F.normalize(z, dim=1).T / self.temperature
        labels = torch.arange(len(p), device=p.device)
        return 2 * self.temperature * F.cross_entropy(logits, labels)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al.); SimCLR/NT-Xent when neither labels nor mask is given."""

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all",
                 base_temperature: float = 0.07) -> None:
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        f = _as_views(features)
        n, views = f.shape[:2]
        if labels is not None and mask is not None:
            raise ValueError("give labels or mask, not both")
        if labels is not None:
            labels = labels.reshape(-1, 1)
            if labels.shape[0] != n:
                raise ValueError(f"{labels.shape[0]} labels for {n} samples")
            pos = torch.eq(labels, labels.T).to(f.dtype)
        elif mask is not None:
            pos = mask.to(f.dtype)
        else:
            pos = torch.eye(n, device=f.device, dtype=f.dtype)
        contrast = torch.cat(torch.unbind(f, dim=1), dim=0)  # [V*N, D], row v*N + i = view v of i
        anchor, n_anchor_views = (f[:, 0], 1) if self.contrast_mode == "one" else (contrast, views)
        logits = anchor @ contrast.T / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        pos = pos.repeat(n_anchor_views, views)
        not_self = torch.ones_like(pos)
        not_self[torch.arange(len(pos)), torch.arange(len(pos))] = 0
        pos = pos * not_self
        log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True) + 1e-6)
        mean_log_prob_pos = (pos * log_prob).sum(1) / pos.sum(1).clamp_min(1)
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()


class RealAnchorConLoss(SupConLoss):
    """SupCon whose only positives are pairs of the anchor (real) class (FS-Adapter).

    ``pos_class_index`` has no default (A1): the task's label vocabulary gives it (DfD/DiFF real = 1,
    FAS live = 1), whatever data paths or split files the run reads. ``forward(features [N, V, d], labels [N])``
    uses integer class labels (for mixed images: the labels before mixup, A3).
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all",
                 base_temperature: float = 0.07, *, pos_class_index: int) -> None:
        super().__init__(temperature, contrast_mode, base_temperature)
        self.pos_class_index = pos_class_index

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if labels.is_floating_point():
            raise ValueError("RealAnchorConLoss needs integer class labels (the labels before mixup), not soft targets")
        is_pos = labels.reshape(-1) == self.pos_class_index
        if not bool(is_pos.any()):
            return features.sum() * 0.0  # no anchor in the batch: zero, graph kept intact
        mask = (is_pos[:, None] & is_pos[None, :]).to(features.dtype)
        return super().forward(features, mask=mask)


CL_LOSSES = ("SimSiam", "BYOL", "InfoNCE", "MOCOv3", "SimCLR")


def build_cl_loss(name: str, cl_sample: str = "all") -> nn.Module:
    """The pre-training contrastive loss for ``--cl_loss`` (``--cl_sample`` is used by InfoNCE)."""
    if name == "SimSiam":
        return SimSiamLoss()
    if name == "BYOL":
        return BYOLLoss()
    if name == "InfoNCE":
        return InfoNCELoss(temperature=0.1, contrast_sample=cl_sample)
    if name == "MOCOv3":
        return MOCOV3Loss(temperature=0.1)
    if name == "SimCLR":
        # Branch-main semantics: NT-Xent at tau = 0.1 with loss factor tau / tau_b = 1.
        return SupConLoss(temperature=0.1, base_temperature=0.1)
    raise ValueError(f"unknown --cl_loss {name!r}; choose from {', '.join(CL_LOSSES)}")
