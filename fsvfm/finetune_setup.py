"""Building blocks shared by the fine-tuning and test programs (DfD / DiFF now, FAS and the
FS-Adapter later): parser groups, the classifier, pre-trained encoder loading, mixup/criterion,
the layer-decayed optimizer and normalisation statistics."""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from fsvfm import models_vit
from fsvfm.util.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    model_state_from,
    resolve_checkpoint_path,
)
from fsvfm.util.lr_decay import param_groups_lrd
from fsvfm.util.norm_stats import STATS_FILENAME, resolve_mean_std
from fsvfm.util.pos_embed import interpolate_pos_embed

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ parser groups
def classifier_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("classifier")
    g.add_argument("--nb_classes", default=2, type=int, help="classes (fake 0, real 1)")
    g.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    g.add_argument("--global_pool", action="store_true", default=True,
                   help="features = fc_norm(mean of patch tokens) (default)")
    g.add_argument("--cls_token", action="store_false", dest="global_pool", help="features = norm(x)[:, 0]")
    g.add_argument("--model_kwargs", default=None,
                   help='JSON dict of extra factory keywords, e.g. \'{"img_size": 32, "depth": 2}\' '
                        "(non-standard sizes; stored in the checkpoint)")
    return p


def augment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("augmentation, mixup and criterion")
    g.add_argument("--color_jitter", default=None, type=float, help="used only without --aa")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy")
    g.add_argument("--train_interpolation", default="bicubic", choices=("bicubic", "bilinear"),
                   help="training crop/RandAugment interpolation (bilinear = the original's accident)")
    g.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    g.add_argument("--reprob", default=0.25, type=float, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing mode")
    g.add_argument("--recount", default=1, type=int, help="random erasing count")
    g.add_argument("--resplit", action="store_true", default=False, help="accepted, unused (as in the original)")
    g.add_argument("--mixup", default=0.0, type=float, help="mixup alpha (> 0 enables)")
    g.add_argument("--cutmix", default=0.0, type=float, help="cutmix alpha (> 0 enables)")
    g.add_argument("--cutmix_minmax", default=None, type=float, nargs="+", help="cutmix min/max ratio")
    g.add_argument("--mixup_prob", default=1.0, type=float)
    g.add_argument("--mixup_switch_prob", default=0.5, type=float)
    g.add_argument("--mixup_mode", default="batch", choices=("batch", "pair", "elem"))
    return p


def split_file_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("split files")
    g.add_argument("--dataset_abs_path", default=None, help="prefix joined to the paths in split files")
    g.add_argument("--delimiter_in_split", "--delimiter_in_spilt", dest="delimiter_in_split", default=" ",
                   help="delimiter between path and label in split files (e.g. ',' or ', ')")
    return p


# ---------------------------------------------------------------------------------- the model
def parse_model_kwargs(value: str | dict | None) -> dict[str, Any]:
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        kwargs = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model_kwargs must be a JSON object, got {value!r} ({e})") from e
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON object, got {value!r}")
    return kwargs


def build_classifier(args: argparse.Namespace) -> models_vit.VisionTransformer:
    """``models_vit`` classifier from ``--model``, ``--nb_classes``, ``--drop_path``, ``--global_pool``
    and ``--model_kwargs`` (``img_size`` defaults to ``--input_size``)."""
    kwargs = {"img_size": args.input_size, **parse_model_kwargs(args.model_kwargs)}
    return models_vit.create_model(args.model, num_classes=args.nb_classes,
                                   drop_path_rate=getattr(args, "drop_path", 0.0),
                                   global_pool=args.global_pool, **kwargs)


def _summarise(keys: Iterable[str]) -> str:
    """``decoder_blocks.* (24), norm.* (2), mask_token`` - one entry per top-level name."""
    groups = Counter(k.split(".")[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items())) or "none"


def load_pretrained_encoder(model: torch.nn.Module, path: str | os.PathLike,
                            new_prefixes: tuple[str, ...] = ("head.", "fc_norm."),
                            head_init_std: float = 2e-5) -> dict[str, list[str]]:
    """Load a pre-training checkpoint's encoder into a classifier (spec 4.2).

    Keys the classifier does not have (decoders, projector, predictor, ``norm`` with global
    pooling, ...) are ignored and listed once; ``pos_embed`` is interpolated if the grid differs; a
    head of another shape is dropped. Every model key not in the file must start with one of
    ``new_prefixes`` (adapters add theirs), otherwise ``CheckpointError``. A freshly initialised
    head gets trunc-normal(std ``head_init_std``) weights. Returns ``{'missing', 'ignored'}``.
    """
    state = dict(model_state_from(load_checkpoint(path), path))
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
        if "head.bias" in missing:
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


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW over layer-decayed groups (spec 4.7); ``args.lr`` must already be set."""
    groups = param_groups_lrd(model, weight_decay=args.weight_decay, layer_decay=args.layer_decay)
    return torch.optim.AdamW(groups, lr=args.lr)


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------- normalisation statistics
def finetune_norm_stats(args: argparse.Namespace) -> tuple[list[float], list[float], str]:
    """Spec 4.4, training side: ``--output_dir``'s statistics file (a resumed run), else the one next
    to ``--finetune``; a warning names what was missing. The caller records the result in
    ``--output_dir`` so the test programs find it next to the checkpoints."""
    files = [Path(args.output_dir) / STATS_FILENAME]
    if args.finetune:
        files.append(resolve_checkpoint_path(args.finetune).parent / STATS_FILENAME)  # hf:// too
    return resolve_mean_std(imagenet=args.normalize_from_IMN, files=files)


def checkpoint_norm_stats(args: argparse.Namespace, checkpoint: dict) -> tuple[list[float], list[float], str]:
    """Spec 4.4, evaluation side: the checkpoint's ``norm_stats``, else the statistics file next to it."""
    return resolve_mean_std(imagenet=args.normalize_from_IMN, embedded=checkpoint.get("norm_stats"),
                            files=[resolve_checkpoint_path(args.resume).parent / STATS_FILENAME])
