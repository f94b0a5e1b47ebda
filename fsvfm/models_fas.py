"""The FAS network of the original (``fas_model_fix``): ViT backbone -> embedder -> classifier.

Parameter names match the released FAS checkpoints (``state_dict`` of the ``.pth.tar``):
``backbone.vit.*``, ``embedder.bottleneck_layer_fc.*`` (registered a second time as
``embedder.bottleneck_layer.0.*``, the same tensors) and ``classifier.classifier_layer.*``.

``forward(x, norm_flag=True)`` returns ``(logits [B, 1+L, 2], embedding [B, 1+L, 512])``; the
prediction is token 0, ``logits[:, 0]``. The backbone returns every token: token 0 is
``fc_norm(mean of the patch tokens)``, tokens 1..L are the raw patch tokens of the last block.
With ``norm_flag`` the embedding is divided by ``sqrt(max(||f||, 1e-12)) * sqrt(2)``: by default the
norm is taken over the token axis (``embed_norm='tokens'``, the original's numerics, S1);
``embed_norm='vector'`` normalises each token's 512-d vector instead.

FS-Adapter variant (``fas_vit_*_fs_adapter``): the backbone is an FS-Adapter ViT (``vit_*_fs_adapter``
with a 2-class ``head`` that stays unused), returning ``(concat([h, a]) [B, 2D], normalize(projector(b)) [B, D/r])``;
the embedder takes the 2D-wide vector (its normalisation is then per vector), and ``forward`` returns
``(logits [B, 2], embedding [B, 512], adapter features [B, D/r])``. Extra parameter names:
``backbone.vit.adapter.linear{1,2}.weight``, ``backbone.vit.projector.*``, ``backbone.vit.head.*``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fsvfm.models_vit import FSAdapterViT, VisionTransformer, is_fs_adapter
from fsvfm.registry import create_model, register_model

EMBED_DIM = 512
EMBED_NORMS = ("tokens", "vector")
_ALIASES = (("bottleneck_layer_fc.", "bottleneck_layer.0."), ("bottleneck_layer.0.", "bottleneck_layer_fc."))


class FeatureGenerator(nn.Module):
    """``backbone``: a pooled ViT (no head) returning all tokens, [B, 3, H, W] -> [B, 1+L, D]."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # norm is the identity with global pooling
        patches = tokens[:, self.vit.num_prefix_tokens:]
        return torch.cat([self.vit.fc_norm(patches.mean(dim=1, keepdim=True)), patches], dim=1)


def add_embedder_aliases(state_dict: dict, prefix: str = "") -> None:
    """Fill ``{prefix}bottleneck_layer_fc.*`` from ``{prefix}bottleneck_layer.0.*`` or the reverse (in place),
    so a state dict saved under either name (or both) loads strictly."""
    for src, dst in _ALIASES:
        for key in [k for k in state_dict if k.startswith(prefix + src)]:
            state_dict.setdefault(prefix + dst + key[len(prefix + src):], state_dict[key])


class FeatureEmbedder(nn.Module):
    """``embedder``: Linear(D, 512) -> ReLU -> Dropout(0.5), then the optional normalisation."""

    def __init__(self, in_dim: int, embed_norm: str = "tokens"):
        super().__init__()
        if embed_norm not in EMBED_NORMS:
            raise ValueError(f"embed_norm must be one of {EMBED_NORMS}, got {embed_norm!r}")
        self.embed_norm = embed_norm
        self.bottleneck_layer_fc = nn.Linear(in_dim, EMBED_DIM)
        nn.init.normal_(self.bottleneck_layer_fc.weight, 0.0, 0.005)
        nn.init.constant_(self.bottleneck_layer_fc.bias, 0.1)
        self.bottleneck_layer = nn.Sequential(self.bottleneck_layer_fc, nn.ReLU(), nn.Dropout(0.5))
        self._register_load_state_dict_pre_hook(self._fill_aliases)

    @staticmethod
    def _fill_aliases(state_dict, prefix, *args) -> None:
        add_embedder_aliases(state_dict, prefix)

    def forward(self, x: torch.Tensor, norm_flag: bool = True) -> torch.Tensor:
        """[B, T, D] -> [B, T, 512]."""
        f = self.bottleneck_layer(x)
        if norm_flag:
            dim = 1 if self.embed_norm == "tokens" else -1
            f = f / (torch.norm(f, p=2, dim=dim, keepdim=True).clamp(min=1e-12) ** 0.5 * math.sqrt(2))
        return f


class Classifier(nn.Module):
    """``classifier``: Linear(512, 2); with ``norm_flag`` its weight is first L2-normalised over axis 0
    (in place, every forward, as SSDG)."""

    def __init__(self):
        super().__init__()
        self.classifier_layer = nn.Linear(EMBED_DIM, 2)
        nn.init.normal_(self.classifier_layer.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier_layer.bias)

    def forward(self, x: torch.Tensor, norm_flag: bool = True) -> torch.Tensor:
        if norm_flag:
            with torch.no_grad():
                w = self.classifier_layer.weight
                w.div_(torch.norm(w, p=2, dim=0, keepdim=True))
        return self.classifier_layer(x)


class FASModel(nn.Module):
    """``fas_model_fix``: backbone -> embedder -> classifier."""

    def __init__(self, vit: VisionTransformer, embed_norm: str = "tokens"):
        super().__init__()
        self.backbone = FeatureGenerator(vit)
        self.embedder = FeatureEmbedder(vit.embed_dim, embed_norm)
        self.classifier = Classifier()

    def forward(self, x: torch.Tensor, norm_flag: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (logits [B, 1+L, 2], embedding [B, 1+L, 512])."""
        embedding = self.embedder(self.backbone(x), norm_flag)
        return self.classifier(embedding, norm_flag), embedding


class AdapterFeatureGenerator(nn.Module):
    """``backbone`` of the FS-Adapter FAS network: [B, 3, H, W] -> (concat([h, a]) [B, 2D], projected [B, D/r])."""

    def __init__(self, vit: FSAdapterViT):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vit.forward_adapter(x)


class FASAdapterModel(nn.Module):
    """``fas_model_fix`` of the FS-Adapter FAS code: adapter backbone -> embedder (2D in) -> classifier."""

    def __init__(self, vit: FSAdapterViT, embed_norm: str = "tokens"):
        super().__init__()
        self.backbone = AdapterFeatureGenerator(vit)
        self.embedder = FeatureEmbedder(2 * vit.embed_dim, embed_norm)
        self.classifier = Classifier()

    def forward(self, x: torch.Tensor, norm_flag: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (logits [B, 2], embedding [B, 512], adapter features [B, D/r])."""
        features, projected = self.backbone(x)
        embedding = self.embedder(features, norm_flag)
        return self.classifier(embedding, norm_flag), embedding, projected




def _fas(vit_name: str, drop_path: float = 0.0, embed_norm: str = "tokens", **vit_kwargs) -> nn.Module:
    # The embedder width comes from the ViT itself, so every size works (S3: huge failed by name).
    if is_fs_adapter(vit_name):  # the original built it with 2 classes; its head stays, unused
        vit = create_model(vit_name, family="classifier", num_classes=2, global_pool=True,
                           drop_path_rate=drop_path, **vit_kwargs)
        return FASAdapterModel(vit, embed_norm)
    vit = create_model(vit_name, family="classifier", num_classes=0, global_pool=True,
                       drop_path_rate=drop_path, **vit_kwargs)
    return FASModel(vit, embed_norm)


@register_model("fas")
def fas_vit_small_patch16(**kwargs) -> FASModel:
    return _fas("vit_small_patch16", **kwargs)


@register_model("fas")
def fas_vit_base_patch16(**kwargs) -> FASModel:
    return _fas("vit_base_patch16", **kwargs)


@register_model("fas")
def fas_vit_large_patch16(**kwargs) -> FASModel:
    return _fas("vit_large_patch16", **kwargs)


@register_model("fas")
def fas_vit_huge_patch14(**kwargs) -> FASModel:
    return _fas("vit_huge_patch14", **kwargs)


@register_model("fas")
def fas_vit_small_patch16_fs_adapter(**kwargs) -> FASAdapterModel:
    return _fas("vit_small_patch16_fs_adapter", **kwargs)


@register_model("fas")
def fas_vit_base_patch16_fs_adapter(**kwargs) -> FASAdapterModel:
    return _fas("vit_base_patch16_fs_adapter", **kwargs)


@register_model("fas")
def fas_vit_large_patch16_fs_adapter(**kwargs) -> FASAdapterModel:
    return _fas("vit_large_patch16_fs_adapter", **kwargs)


@register_model("fas")
def fas_vit_huge_patch14_fs_adapter(**kwargs) -> FASAdapterModel:
    return _fas("vit_huge_patch14_fs_adapter", **kwargs)


def fas_registry_name(model_name: str) -> str:
    """``vit_base_patch16`` -> ``fas_vit_base_patch16`` (a ``fas_`` name is returned as it is)."""
    return model_name if model_name.startswith("fas_") else f"fas_{model_name}"


def create_fas_model(model_name: str, drop_path: float = 0.0, embed_norm: str = "tokens",
                     **vit_kwargs) -> FASModel | FASAdapterModel:
    """Build the FAS network for a ``--model`` name (``vit_base_patch16``, ``vit_base_patch16_fs_adapter``; the
    registry names ``fas_vit_base_patch16...`` work too). ``vit_kwargs`` go to the ViT (e.g. a tiny
    ``img_size``/``depth``, or ``adapter_reduction`` for an adapter model)."""
    return create_model(fas_registry_name(model_name), family="fas", drop_path=drop_path, embed_norm=embed_norm,
                        **vit_kwargs)
