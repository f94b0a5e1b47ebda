"""The classifier's building blocks (``models_vit``, FS-Adapter variants included), used by the classifier tasks'
table entries (``tasks/classifier.py``, ``tasks/dfd.py``), FAS's encoder loading and ``predict``: the classifier by
registry name, pre-trained encoder loading, rebuilding a fine-tuned classifier from its checkpoint (the tasks'
``rebuild``), mixup/criterion and the layer-decayed optimizer."""
from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from fsvfm.data.finetune import build_transform
from fsvfm.models_vit import _SIZES as VIT_SIZES
from fsvfm.models_vit import FS_ADAPTER_SUFFIX, is_fs_adapter
from fsvfm.registry import create_model, list_models, model_family
from fsvfm.util.args import parse_model_kwargs
from fsvfm.util.checkpoint import (
    CheckpointError,
    args_dict,
    build_for_weights,
    check_model_kwargs,
    load_checkpoint,
    load_model_weights,
    model_state_from,
    model_warnings,
    resolve_checkpoint_path,
)
from fsvfm.util.dist import unwrap_model
from fsvfm.util.norm_stats import checkpoint_mean_std
from fsvfm.util.pos_embed import interpolate_pos_embed

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- the model
def build_classifier(args: argparse.Namespace) -> torch.nn.Module:
    """Registered classifier ``--model`` with ``--nb_classes``, ``--drop_path``, ``--global_pool``
    and ``--model_kwargs`` (``img_size`` defaults to ``--input_size``); an FS-Adapter model also
    gets ``--adapter_reduction``."""
    kwargs = {"img_size": args.input_size, **parse_model_kwargs(args.model_kwargs)}
    if is_fs_adapter(args.model):
        kwargs.setdefault("adapter_reduction", getattr(args, "adapter_reduction", 4))
    return create_model(args.model, family="classifier", num_classes=args.nb_classes,
                        drop_path_rate=getattr(args, "drop_path", 0.0), global_pool=args.global_pool, **kwargs)


def _summarise(keys: Iterable[str]) -> str:
    """``decoder_blocks.* (24), norm.* (2), mask_token`` - one entry per top-level name."""
    groups = Counter(k.split(".")[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items())) or "none"


def load_pretrained_encoder(model: torch.nn.Module, path: str | os.PathLike,
                            new_prefixes: tuple[str, ...] = ("head.", "fc_norm."),
                            head_init_std: float = 2e-5, zero_head_bias: bool | None = None,
                            strip_prefix: str = "", state: Mapping[str, torch.Tensor] | None = None) -> dict[str, list[str]]:
    """Load a pre-training checkpoint's encoder into a classifier.

    Keys the classifier does not have (decoders, projector, predictor, ``norm`` with global
    pooling, ...) are ignored and listed once; ``pos_embed`` is interpolated if the grid differs; a
    head of another shape is dropped. Every model key not in the file must start with one of
    ``new_prefixes`` or the model's own ``new_param_prefixes`` (an adapter's), otherwise
    ``CheckpointError``. A freshly initialised head gets trunc-normal(std ``head_init_std``) weights
    and a zero bias unless ``zero_head_bias`` is False (None: the model's ``zero_head_bias_on_load``,
    default True; the FS-Adapter keeps its uniform bias). ``strip_prefix`` is removed from the
    file's keys first; ``state``: the file's weights when the caller has already read them (``path`` then only
    names them in messages). Returns ``{'missing', 'ignored'}``.
    """
    new_prefixes = (*new_prefixes, *getattr(model, "new_param_prefixes", ()))
    if zero_head_bias is None:
        zero_head_bias = getattr(model, "zero_head_bias_on_load", True)
    state = dict(model_state_from(load_checkpoint(path), path) if state is None else state)
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    own = model.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            logger.info("Dropping %s of shape %s from %s (classifier has %s)", key, tuple(state[key].shape),
                        path, tuple(own[key].shape))
            del state[key]
    interpolate_pos_embed(model, state)
    ignored = sorted(set(state) - set(own))
    load_model_weights(model, {k: v for k, v in state.items() if k in own}, strict=False, source=path)
    missing = sorted(set(own) - set(state))
    unexpected_missing = [k for k in missing if not k.startswith(new_prefixes)]
    if unexpected_missing:
        raise CheckpointError(f"{path} does not hold a complete encoder for {type(model).__name__}: "
                              f"{len(unexpected_missing)} encoder key(s) missing, e.g. {unexpected_missing[:5]}")
    if "head.weight" in missing:
        torch.nn.init.trunc_normal_(model.head.weight, std=head_init_std)
        if "head.bias" in missing and zero_head_bias:
            torch.nn.init.zeros_(model.head.bias)
    logger.info("Loaded pre-trained encoder from %s (%d tensors). Newly initialised (expected): %s. "
                "Ignored checkpoint keys not used by the classifier (expected for pre-training "
                "checkpoints): %s", path, len(state) - len(ignored), _summarise(missing), _summarise(ignored))
    return {"missing": missing, "ignored": ignored}


# --------------------------------------------------------------------- optimisation pieces
def build_mixup_and_criterion(args: argparse.Namespace) -> tuple[Mixup | None, torch.nn.Module]:
    """timm Mixup when ``--mixup``/``--cutmix``/``--cutmix_minmax`` is active, with the matching
    criterion: soft-target CE with mixup, label-smoothing CE with ``--smoothing``, else plain CE."""
    active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if active:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                      prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                      label_smoothing=args.smoothing, num_classes=args.nb_classes)
        return mixup, SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return None, torch.nn.CrossEntropyLoss()


def layer_decay_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """timm's layer-decay parameter groups: ``lr_scale = layer_decay ** (top - layer id)``,
    weight decay 0 for 1-D parameters and ``model.no_weight_decay()``; frozen parameters skipped.
    Layer ids come from the model's ``group_matcher`` (stem 0, ``blocks.i`` i + 1, rest on top), so
    modules a task adds inside blocks join their block. Wrapped models are unwrapped first."""
    model = unwrap_model(model)
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                    layer_decay=layer_decay)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW over layer-decayed groups; ``args.lr`` must already be set."""
    return torch.optim.AdamW(layer_decay_groups(model, args.weight_decay, args.layer_decay), lr=args.lr)


# ------------------------------------------------------------------ rebuilding a fine-tuned model
FALLBACK_MODEL = "vit_large_patch16"
DEFAULT_INPUT_SIZE = 224


def infer_classifier_name(state: dict[str, torch.Tensor]) -> str | None:
    """The ``models_vit`` name whose patch size, width and depth match a state dict, or None."""
    try:
        patch, width = int(state["patch_embed.proj.weight"].shape[-1]), int(state["patch_embed.proj.weight"].shape[0])
    except KeyError:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name, size in VIT_SIZES.items():
        if (size["patch_size"], size["embed_dim"], size["depth"]) == (patch, width, depth):
            return _with_adapter(name, state)
    return None


def _with_adapter(model: str, state: dict[str, torch.Tensor]) -> str:
    """``model``'s ``*_fs_adapter`` twin when ``state`` holds FS-Adapter weights under a plain ViT name
    (the original's adapter programs record the plain factory name), else ``model``."""
    twin = model + FS_ADAPTER_SUFFIX
    if "adapter.linear1.weight" in state and not is_fs_adapter(model) and twin in list_models(family="classifier"):
        return twin
    return model


def _check_is_classifier(path: str | os.PathLike, model: str, state: dict[str, torch.Tensor]) -> None:
    """A pre-training (or other non-classifier) checkpoint is a ``CheckpointError`` saying what to do."""
    family = model_family(model) if model in list_models() else None
    pretrain_keys = "head.weight" not in state and any(k.startswith(("mask_token", "decoder_")) for k in state)
    if family == "pretrain" or (family is None and pretrain_keys):
        raise CheckpointError(f"{path} is a pre-training checkpoint ({model}), not a classifier: fine-tune it first "
                              f"(main_finetune_DfD.py --finetune {path} ...) and test the fine-tuned checkpoint")
    if family not in (None, "classifier"):
        raise CheckpointError(f"{path} holds a {family} model ({model}), not a classifier of the DfD/DiFF programs; "
                              f"classifiers: {list_models(family='classifier')}")


def _rebuild_args(path: str | os.PathLike, checkpoint: dict, state: dict[str, torch.Tensor],
                  overrides: dict[str, Any]) -> argparse.Namespace:
    """Model/input settings: an override when not None, else the checkpoint's, else inferred from the
    weights' shapes, else the default."""
    stored = args_dict(checkpoint)
    pick = {k: v for k, v in overrides.items() if v is not None}
    recorded = checkpoint.get("model_name") or stored.get("model")
    _check_is_classifier(path, recorded or pick.get("model") or "", state)
    named = pick.get("model") or recorded
    model = _with_adapter(named, state) if named else infer_classifier_name(state) or FALLBACK_MODEL
    if named and model != named:
        logger.info("%s holds FS-Adapter weights: rebuilding %s as %s", path, named, model)
    kwargs = pick.get("model_kwargs", stored.get("model_kwargs"))
    return argparse.Namespace(
        model=model, model_kwargs=parse_model_kwargs(kwargs), resume=str(path),
        adapter_reduction=int(pick.get("adapter_reduction", stored.get("adapter_reduction") or 4)),
        input_size=int(pick.get("input_size", stored.get("input_size") or DEFAULT_INPUT_SIZE)),
        nb_classes=int(pick.get("nb_classes", stored.get("nb_classes") or len(state.get("head.weight", [0, 0])))),
        global_pool=bool(pick.get("global_pool", stored.get("global_pool", True))),
        drop_path=float(pick.get("drop_path", 0.0)),
        apply_simple_augment=bool(pick.get("apply_simple_augment", False)),
        normalize_from_IMN=bool(pick.get("normalize_from_IMN", False)))


def load_classifier_from_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", *,
                                    checkpoint: dict | None = None, local: Path | None = None,
                                    **overrides: Any) -> tuple[torch.nn.Module, Callable, dict[str, Any]]:
    """Rebuild a fine-tuned classifier from its checkpoint, in eval mode on ``device``, with the
    test programs' eval transform (PIL image -> normalised tensor [3, S, S]).

    The model name, ``model_kwargs``, ``input_size``, ``nb_classes``, ``global_pool`` and
    ``adapter_reduction`` come from the checkpoint (``model_name`` / stored ``args``) unless given in
    ``overrides`` (None = not given); a checkpoint holding adapter weights under a plain ViT name
    (the original's adapter programs) is rebuilt as that size's ``*_fs_adapter`` model;
    ``apply_simple_augment`` (resize-256 + centre crop instead of a full resize) and
    ``normalize_from_IMN`` are off unless given; normalisation statistics come from the checkpoint's
    ``norm_stats``, else the statistics file next to it. Returns ``(model, transform, info)`` with
    ``info``: ``model``, ``input_size``, ``nb_classes``, ``mean``, ``std``, ``norm_source``,
    ``eval_transform``. A pre-training checkpoint is a ``CheckpointError`` saying "fine-tune it first".
    ``checkpoint`` / ``local``: the file's content / the file ``path`` resolved to, when the caller has them
    (read and resolved once).
    """
    local = resolve_checkpoint_path(path) if local is None else local
    checkpoint = load_checkpoint(local) if checkpoint is None else checkpoint
    state = model_state_from(checkpoint, path)
    args = _rebuild_args(path, checkpoint, state, overrides)
    if args.model not in list_models(family="classifier"):
        raise CheckpointError(f"{path}: model {args.model!r} is not a registered classifier; "
                              f"known: {list_models(family='classifier')}")
    check_model_kwargs({"img_size": args.input_size, "num_classes": args.nb_classes, **args.model_kwargs}, path)
    model = build_for_weights(lambda: build_classifier(args), state, path, args.model)
    mean, std, source = checkpoint_mean_std(checkpoint, local, imagenet=args.normalize_from_IMN)
    resize = "resize-256 + centre-crop" if args.apply_simple_augment else "full resize"
    info = {"model": args.model, "input_size": args.input_size, "nb_classes": args.nb_classes, "mean": mean, "std": std, "norm_source": source,
            "eval_transform": f"{resize} to {args.input_size}", "warnings": model_warnings(checkpoint)}
    return model.to(device).eval(), build_transform(False, args, mean, std), info
