"""Downstream ViT classifiers (timm ``VisionTransformer``) with the original's factory names.

``global_pool=True`` (default): features = ``fc_norm(mean of patch tokens)`` (cls excluded);
``global_pool=False``: features = ``norm(tokens)[:, 0]``. Logits = ``head(features)``.
"""
from __future__ import annotations

from functools import partial

import torch.nn as nn
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
        """Layer ids for layer-wise lr decay (spec 4.7): stem 0, ``blocks.i`` i + 1, everything else
        (``norm``, ``fc_norm``, ``head``, modules a task adds) the top layer. timm's own matcher
        would put ``norm`` with the last block."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed|^reg_token|^dist_token",
                "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)]}


def _vit(model_name: str, **kwargs) -> VisionTransformer:
    return VisionTransformer(**{**_SIZES[model_name], **kwargs})


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
