"""FS-VFM / FSFM pre-training networks: the online ``FSFMViT`` and the EMA ``TargetNetworkViT``.

Both share one implementation (``_FSFMBackbone``) of the ViT encoder, the representation decoder
and the projector; the online network adds the predictor and the MAE-style pixel decoder.
Parameter names, shapes and registration order equal the original's, so released checkpoints
(and their optimizer states) load with ``strict=True``.

Shapes: N batch, L = (img_size / patch_size)^2 patches, D encoder width, K kept tokens.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from fsvfm.masking import num_masked_patches
from fsvfm.registry import register_model
from fsvfm.util.pos_embed import get_2d_sincos_pos_embed

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


class BYOLMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear, registered as ``projection_head.{0,1,3}``."""

    def __init__(self, dim: int, projection_size: int, hidden_size: int = 4096) -> None:
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(dim, hidden_size), nn.LayerNorm(hidden_size), nn.ReLU(inplace=True),
            nn.Linear(hidden_size, projection_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(x)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float, norm_layer: Callable) -> nn.ModuleList:
    return nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                          for _ in range(depth)])


def _fixed_param(shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape), requires_grad=False)


@torch.compiler.disable  # a data-dependent count: read eagerly, outside any compiled graph
def kept_patches(img_mask: torch.Tensor | None, length: int, mask_ratio: float | None = None) -> int:
    """K, the patches the encoder keeps: ``L`` minus the masked count (``img_mask != 0``) of every row.

    Every row must mask the same number of patches; a given ``mask_ratio`` must mask that number too
    (``fsvfm.masking.num_masked_patches``). A CPU mask is read without waiting for the device; a mask on
    the device costs one host sync. No mask keeps every patch.
    """
    if img_mask is None:
        return length
    if img_mask.dim() != 2 or img_mask.shape[1] != length:
        raise ValueError(f"img_mask must be [N, {length}] (1 = masked), got {tuple(img_mask.shape)}")
    counts = (img_mask != 0).sum(dim=1)
    low, high = torch.stack([counts.min(), counts.max()]).tolist()
    if low != high:
        raise ValueError(f"every row of img_mask must mask the same number of patches, got {low} to {high} "
                         f"of {length}")
    if mask_ratio is not None and num_masked_patches(length, mask_ratio) != low:
        raise ValueError(f"mask_ratio {mask_ratio} masks {num_masked_patches(length, mask_ratio)} of {length} "
                         f"patches but img_mask masks {low}")
    return length - low


def restore_token_order(tokens: torch.Tensor, mask_token: torch.Tensor,
                        ids_restore: torch.Tensor) -> torch.Tensor:
    """Append mask tokens to the kept tokens and undo the shuffle (the cls token stays first).

    tokens [N, 1+K, C], mask_token [1, 1, C], ids_restore [N, L] -> [N, 1+L, C].
    """
    n, length = ids_restore.shape
    if tokens.shape[1] == length + 1:
        patches = tokens[:, 1:]
    else:
        fill = mask_token.to(tokens.dtype).expand(n, length + 1 - tokens.shape[1], -1)
        patches = torch.cat([tokens[:, 1:], fill], dim=1)
    index = ids_restore.unsqueeze(-1).expand(-1, -1, tokens.shape[2])
    return torch.cat([tokens[:, :1], torch.gather(patches, 1, index)], dim=1)


class _FSFMBackbone(nn.Module):
    """Encoder + representation decoder + projector (+ predictor and pixel decoder when online)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 projection_size: int = 256, projection_hidden_size: int = 4096,
                 rep_decoder_embed_dim: int | None = None, rep_decoder_depth: int = 2,
                 rep_decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_layer: Callable = nn.LayerNorm, norm_pix_loss: bool = False,
                 online: bool = True) -> None:
        super().__init__()
        rep_dim = embed_dim if rep_decoder_embed_dim is None else rep_decoder_embed_dim
        if rep_dim != embed_dim:
            # The shared mask token and decoder_embed assume equal widths (spec P3).
            raise ValueError(f"rep_decoder_embed_dim ({rep_dim}) must equal embed_dim ({embed_dim})")
        self.online = online
        self.norm_pix_loss = norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        # Registration order below reproduces the original named_parameters() order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = _fixed_param((1, num_patches + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, rep_dim))
        self.rep_decoder_pos_embed = _fixed_param((1, num_patches + 1, rep_dim))
        if online:
            self.decoder_pos_embed = _fixed_param((1, num_patches + 1, decoder_embed_dim))
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, norm_layer)
        self.norm = norm_layer(embed_dim)
        self.projector = BYOLMLP(rep_dim, projection_size, projection_hidden_size)
        if online:
            self.predictor = BYOLMLP(projection_size, projection_size, projection_hidden_size)
        self.rep_decoder_embed = nn.Linear(embed_dim, rep_dim)
        self.rep_decoder_blocks = _blocks(rep_dim, rep_decoder_depth, rep_decoder_num_heads, mlp_ratio,
                                          norm_layer)
        self.rep_decoder_norm = norm_layer(rep_dim)
        self.rep_decoder_pred = nn.Linear(rep_dim, embed_dim)
        if online:
            self.decoder_embed = nn.Linear(rep_dim, decoder_embed_dim)
            self.decoder_blocks = _blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                                          norm_layer)
            self.decoder_norm = norm_layer(decoder_embed_dim)
            self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self.initialize_weights()

    # ----------------------------------------------------------------------------- init
    def initialize_weights(self) -> None:
        grid = int(self.patch_embed.num_patches ** 0.5)

        def sincos(p: nn.Parameter) -> None:
            p.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(p.shape[-1], grid, cls_token=True))[None])

        sincos(self.pos_embed)
        if self.online:
            sincos(self.decoder_pos_embed)
            # The original never initialises the online rep_decoder_pos_embed: it stays zero (spec P2).
        else:
            sincos(self.rep_decoder_pos_embed)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- helpers
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, L, P*P*3]; within a patch the channel varies fastest, then x, then y."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h != w or h % p:
            raise ValueError(f"patchify needs square images divisible by {p}, got {tuple(imgs.shape)}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor, in_chans: int = 3) -> torch.Tensor:
        """[N, L, P*P*C] -> [N, C, H, W] (inverse of ``patchify``)."""
        p = self.patch_size
        g = int(x.shape[1] ** 0.5)
        if g * g != x.shape[1]:
            raise ValueError(f"unpatchify needs a square number of patches, got {x.shape[1]}")
        x = x.reshape(x.shape[0], g, g, p, p, in_chans)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], in_chans, g * p, g * p)

    # ----------------------------------------------------------------------------- forward parts
    def forward_encoder(self, imgs: torch.Tensor, img_mask: torch.Tensor | None,
                        mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the visible patches (``img_mask == 0``; None keeps all). Returns latent [N, 1+K, D] and
        ids_restore [N, L].

        ``K`` comes from the mask (``kept_patches``; ``mask_ratio``, when given, is only checked against
        it): the same count as the CRFR-P collate masked (the original derived it from the ratio as
        ``int(L * (1 - r))``, which disagreed with its collate for fractional ``r * L``, DEVIATIONS.md P8).
        Give the mask as the collate made it, on the CPU: the count is read there and the mask moved to
        the device without a host sync.
        """
        len_keep = kept_patches(img_mask, self.patch_embed.num_patches, mask_ratio)
        if img_mask is not None:
            img_mask = img_mask.to(imgs.device, non_blocking=True)
        return self._encode(imgs, img_mask, len_keep)

    def _encode(self, imgs: torch.Tensor, img_mask: torch.Tensor | None,
                len_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        n, length, d = x.shape
        if img_mask is None or len_keep == length:
            # Keeping every token: the shuffle is a no-op for a permutation-equivariant encoder.
            ids_restore = torch.arange(length, device=x.device).expand(n, -1)
        else:
            ids_shuffle = torch.argsort(img_mask, dim=1, stable=True)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), ids_restore

    def forward_rep_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Representation decoder: [N, 1+K, D] -> [N, 1+L, D]."""
        x = restore_token_order(self.rep_decoder_embed(latent), self.mask_token, ids_restore)
        x = x + self.rep_decoder_pos_embed
        for blk in self.rep_decoder_blocks:
            x = blk(x)
        return self.rep_decoder_pred(self.rep_decoder_norm(x))

    def global_projection(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Mean over all 1+L rep-decoder tokens (cls included), then the projector: [N, proj]."""
        return self.projector(self.forward_rep_decoder(latent, ids_restore).mean(dim=1))


class FSFMViT(_FSFMBackbone):
    """Online network: masked encoder, pixel decoder, representation decoder, projector, predictor."""

    def __init__(self, **kwargs) -> None:
        super().__init__(online=True, **kwargs)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Pixel decoder on the encoder latent: [N, 1+K, D] -> [N, L, P*P*3].

        Unlike MAE, the mask tokens are inserted before ``decoder_embed`` (original order).
        """
        x = self.decoder_embed(restore_token_order(latent, self.mask_token, ids_restore))
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, img_mask: torch.Tensor,
                     sfr_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean per-patch MSE over masked patches, and over the chosen facial region's patches.

        A region absent from the whole batch contributes 0 (the original divided 0 by 0).
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        err = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        img_mask = img_mask.to(err.dtype)
        sfr_mask = sfr_mask.to(err.dtype)
        loss_all = (err * img_mask).sum() / img_mask.sum()
        loss_sfr = (err * sfr_mask).sum() / sfr_mask.sum().clamp_min(1.0)
        return loss_all, loss_sfr

    def forward(self, imgs: torch.Tensor, img_mask: torch.Tensor, specific_facial_region_mask: torch.Tensor,
                mask_ratio: float | None = None):
        """Returns ``(loss_rec_all, loss_rec_sfr, features_cl [N, proj], pred [N, L, P*P*3], img_mask)``
        (``img_mask`` on the model's device).

        ``img_mask`` [N, L] decides the kept count (see ``forward_encoder``); ``mask_ratio`` keeps the
        original's call shape and is only checked against the mask.
        """
        len_keep = kept_patches(img_mask, self.patch_embed.num_patches, mask_ratio)
        img_mask = img_mask.to(imgs.device, non_blocking=True)
        latent, ids_restore = self._encode(imgs, img_mask, len_keep)
        feat = self.predictor(self.global_projection(latent, ids_restore))
        pred = self.forward_decoder(latent, ids_restore)
        loss_all, loss_sfr = self.forward_loss(imgs, pred, img_mask, specific_facial_region_mask)
        return loss_all, loss_sfr, F.normalize(feat, dim=-1), pred, img_mask


class TargetNetworkViT(_FSFMBackbone):
    """EMA target network: full-view encoder, representation decoder and projector."""

    def __init__(self, **kwargs) -> None:
        for key in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss"):
            kwargs.pop(key, None)
        super().__init__(online=False, **kwargs)

    def forward(self, imgs: torch.Tensor, img_mask: torch.Tensor | None = None,
                specific_facial_region_mask: torch.Tensor | None = None,
                mask_ratio: float | None = None) -> torch.Tensor:
        """Returns the L2-normalised projection ``z`` [N, proj] of the full view (``img_mask`` None; a
        mask would drop its patches as in ``forward_encoder``)."""
        latent, ids_restore = self.forward_encoder(imgs, img_mask, mask_ratio)
        return F.normalize(self.global_projection(latent, ids_restore), dim=-1)


# ----------------------------------------------------------------------------------- registry
_COMMON = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, rep_decoder_depth=2,
               rep_decoder_num_heads=16, mlp_ratio=4, norm_layer=LayerNorm6)
MODEL_CONFIGS: dict[str, dict] = {
    "fsfm_vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12, **_COMMON),
    "fsfm_vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_COMMON),
    "fsfm_vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_COMMON),
    "fsfm_vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_COMMON),
}
_ALIASES = {f"{name}_dec512d8b": name for name in MODEL_CONFIGS}


def _config(model_name: str, **kwargs) -> dict:
    name = _ALIASES.get(model_name, model_name)
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown pre-training model {model_name!r}; choose from {sorted(MODEL_CONFIGS)}")
    cfg = dict(MODEL_CONFIGS[name])
    cfg.update(kwargs)
    cfg.setdefault("rep_decoder_embed_dim", cfg["embed_dim"])
    return cfg


def vit_target_network(model_name: str, **kwargs) -> TargetNetworkViT:
    """Build the target network matching the online network ``model_name``."""
    return TargetNetworkViT(**_config(model_name, **kwargs))


@register_model("pretrain", aliases=("fsfm_vit_small_patch16_dec512d8b",))
def fsfm_vit_small_patch16(**kwargs) -> FSFMViT:
    return FSFMViT(**_config("fsfm_vit_small_patch16", **kwargs))


@register_model("pretrain", aliases=("fsfm_vit_base_patch16_dec512d8b",))
def fsfm_vit_base_patch16(**kwargs) -> FSFMViT:
    return FSFMViT(**_config("fsfm_vit_base_patch16", **kwargs))


@register_model("pretrain", aliases=("fsfm_vit_large_patch16_dec512d8b",))
def fsfm_vit_large_patch16(**kwargs) -> FSFMViT:
    return FSFMViT(**_config("fsfm_vit_large_patch16", **kwargs))


@register_model("pretrain", aliases=("fsfm_vit_huge_patch14_dec512d8b",))
def fsfm_vit_huge_patch14(**kwargs) -> FSFMViT:
    return FSFMViT(**_config("fsfm_vit_huge_patch14", **kwargs))


fsfm_vit_small_patch16_dec512d8b = fsfm_vit_small_patch16
fsfm_vit_base_patch16_dec512d8b = fsfm_vit_base_patch16
fsfm_vit_large_patch16_dec512d8b = fsfm_vit_large_patch16
fsfm_vit_huge_patch14_dec512d8b = fsfm_vit_huge_patch14
