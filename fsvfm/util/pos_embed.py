"""2-D sin-cos position tables (MAE convention) and checkpoint pos-embed interpolation."""
from __future__ import annotations

import logging

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

logger = logging.getLogger(__name__)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """Return [M, embed_dim]: ``[sin(pos*w), cos(pos*w)]`` with ``w_k = 10000^(-k/(D/2))``."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """Return [G*G (+1), D] float32; first D/2 channels encode the column (x), the rest the row (y).

    Positions are enumerated row-major; with ``cls_token`` a zero row is prepended.
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    grid_w, grid_h = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                                 np.arange(grid_size, dtype=np.float64), indexing="xy")
    emb = np.concatenate([get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_w),
                          get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb.astype(np.float32)


def interpolate_pos_embed(model: torch.nn.Module, state_dict: dict) -> None:
    """Resize ``state_dict['pos_embed']`` in place (bicubic) when its grid differs from the model's."""
    if "pos_embed" not in state_dict:
        return
    pos_embed = state_dict["pos_embed"]
    num_patches = model.patch_embed.num_patches
    num_extra = model.pos_embed.shape[-2] - num_patches
    old_size = int((pos_embed.shape[-2] - num_extra) ** 0.5)
    new_size = int(num_patches ** 0.5)
    if old_size == new_size:
        return
    logger.info("Position embedding interpolated from %dx%d to %dx%d", old_size, old_size, new_size, new_size)
    state_dict["pos_embed"] = resample_abs_pos_embed(
        pos_embed.float(), new_size=[new_size, new_size], old_size=[old_size, old_size],
        num_prefix_tokens=num_extra, interpolation="bicubic", antialias=False)
