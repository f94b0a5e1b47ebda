"""Layer-wise learning-rate decay parameter groups for ViTs (BEiT / MAE rule, spec 4.7 / 8.2)."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from fsvfm.util.dist import unwrap_model


def get_layer_id_for_vit(name: str, num_layers: int) -> int:
    """``cls_token``/``pos_embed``/``patch_embed.*`` -> 0, ``blocks.{i}.*`` -> i + 1, else ``num_layers``.

    ``name`` must be un-prefixed (no ``module.``); ``param_groups_lrd`` takes care of that.
    """
    if name in ("cls_token", "pos_embed", "reg_token", "dist_token") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_scales(num_layers: int, layer_decay: float) -> list[float]:
    """``layer_decay ** (num_layers - k)`` for k = 0..num_layers (Python's 0**0 = 1 for the top)."""
    return [layer_decay ** (num_layers - k) for k in range(num_layers + 1)]


def param_groups_lrd(model: torch.nn.Module, weight_decay: float = 0.05,
                     no_weight_decay_list: Iterable[str] | None = None,
                     layer_decay: float = 0.75) -> list[dict]:
    """AdamW parameter groups ``layer_{id}_{decay|no_decay}`` with ``lr_scale`` and ``weight_decay``.

    ``num_layers = len(model.blocks) + 1``. Weight decay is 0 for 1-D parameters and for names in
    ``no_weight_decay_list`` (default: the model's ``no_weight_decay()``). Frozen parameters are
    skipped. Wrapped models (DDP, compile) are unwrapped first so layer ids see plain names.
    """
    model = unwrap_model(model)
    if no_weight_decay_list is None:
        no_weight_decay_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    skip = set(no_weight_decay_list)
    num_layers = len(model.blocks) + 1
    scales = layer_scales(num_layers, layer_decay)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in skip
        layer_id = get_layer_id_for_vit(name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"name": key, "lr_scale": scales[layer_id],
                           "weight_decay": 0.0 if no_decay else weight_decay, "params": []}
        groups[key]["params"].append(param)
    return list(groups.values())
