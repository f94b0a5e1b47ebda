"""Downstream ViT classifiers (timm ``VisionTransformer``) with the original's factory names.

``global_pool=True`` (default): features = ``fc_norm(mean of patch tokens)`` (cls excluded);
``global_pool=False``: features = ``norm(tokens)[:, 0]``. Logits = ``head(features)``.

``vit_*_fs_adapter``: the same encoder with the FS-Adapter after the pooled feature.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as _TimmViT

from fsvfm.registry import register_model

_SIZES: dict[str, dict] = {
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}


class VisionTransformer(_TimmViT):
    """timm ViT taking the original's boolean ``global_pool`` keyword."""

    def __init__(self, global_pool: bool | str = True, **kwargs) -> None:
        if isinstance(global_pool, bool):
            global_pool = "avg" if global_pool else "token"
        kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-6))
        kwargs.setdefault("qkv_bias", True)
        kwargs.setdefault("mlp_ratio", 4)
        super().__init__(global_pool=global_pool, **kwargs)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay: stem 0, ``blocks.i`` i + 1, everything else
        (``norm``, ``fc_norm``, ``head``, modules a task adds) the top layer. timm's own matcher
        would put ``norm`` with the last block."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed|^reg_token|^dist_token",
                "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)]}

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> pooled, normalised feature [N, D] (the input of ``head``)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


class Adapter(nn.Module):
    """Bottleneck ``h [N, D] -> b = relu(linear1 h) [N, D // r] -> a = relu(linear2 b) [N, D]``; returns ``(a, b)``."""

    def __init__(self, c_in: int, reduction: int = 4) -> None:
        super().__init__()
        if reduction < 1 or c_in % reduction:
            raise ValueError(f"adapter_reduction must divide the width {c_in}, got {reduction}")
        self.linear1 = nn.Linear(c_in, c_in // reduction, bias=False)
        self.linear2 = nn.Linear(c_in // reduction, c_in, bias=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = F.relu(self.linear1(h))
        return F.relu(self.linear2(b)), b


class FSAdapterViT(VisionTransformer):
    """ViT + FS-Adapter: ``logits = head(concat([h, a]))`` with ``(a, b) = adapter(h)``, ``h`` the pooled feature.

    Initialisation as the original (A6): the encoder gets timm's init; ``adapter``, ``projector`` and
    the 2D-wide ``head`` are created afterwards, so they keep PyTorch's default Linear init (Kaiming-uniform
    a=sqrt(5) weights, biases uniform in +-1/sqrt(fan_in)). Loading a pre-trained encoder re-draws
    ``head.weight`` (trunc-normal, std 2e-5); ``head.bias`` keeps its uniform init (not zero).
    """

    # Keys a pre-training checkpoint does not hold (the encoder loader accepts them as missing), and the
    # loader keeps the uniform head bias instead of zeroing it.
    new_param_prefixes: tuple[str, ...] = ("head.", "fc_norm.", "adapter.", "projector.")
    zero_head_bias_on_load: bool = False

    def __init__(self, adapter_reduction: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        d = self.embed_dim
        self.adapter = Adapter(d, adapter_reduction)
        self.projector = nn.Linear(d // adapter_reduction, d // adapter_reduction)
        self.head = nn.Linear(2 * d, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def forward_adapter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] -> (``concat([h, a])`` [N, 2D], ``normalize(projector(b))`` [N, D // r])."""
        h = self.forward_pooled(x)
        a, b = self.adapter(h)
        return torch.cat([h, a], dim=-1), F.normalize(self.projector(b), dim=-1)

    def forward(self, x: torch.Tensor, training: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, C]; with ``training=True`` also the normalised projected bottleneck [N, D // r]."""
        features, projected = self.forward_adapter(x)
        logits = self.head(features)
        return (logits, projected) if training else logits


FS_ADAPTER_SUFFIX = "_fs_adapter"


def is_fs_adapter(name: str) -> bool:
    """Whether the registered classifier ``name`` is an FS-Adapter model (``vit_*_fs_adapter``)."""
    return name.endswith(FS_ADAPTER_SUFFIX)


def _vit(model_name: str, cls: type[VisionTransformer] = VisionTransformer, **kwargs) -> VisionTransformer:
    return cls(**{**_SIZES[model_name], **kwargs})


@register_model("classifier")
def vit_small_patch16(**kwargs) -> VisionTransformer:
    return _vit("vit_small_patch16", **kwargs)


@register_model("classifier")
def vit_base_patch16(**kwargs) -> VisionTransformer:
    return _vit("vit_base_patch16", **kwargs)


@register_model("classifier")
def vit_large_patch16(**kwargs) -> VisionTransformer:
    return _vit("vit_large_patch16", **kwargs)


@register_model("classifier")
def vit_huge_patch14(**kwargs) -> VisionTransformer:
    return _vit("vit_huge_patch14", **kwargs)


@register_model("classifier")
def vit_small_patch16_fs_adapter(**kwargs) -> FSAdapterViT:
    return _vit("vit_small_patch16", FSAdapterViT, **kwargs)


@register_model("classifier")
def vit_base_patch16_fs_adapter(**kwargs) -> FSAdapterViT:
    return _vit("vit_base_patch16", FSAdapterViT, **kwargs)


@register_model("classifier")
def vit_large_patch16_fs_adapter(**kwargs) -> FSAdapterViT:
    return _vit("vit_large_patch16", FSAdapterViT, **kwargs)


@register_model("classifier")
def vit_huge_patch14_fs_adapter(**kwargs) -> FSAdapterViT:
    return _vit("vit_huge_patch14", FSAdapterViT, **kwargs)
