"""Checkpoint I/O, in one place.

File format (compatible with the released weights): a dict with ``model`` (state dict),
``optimizer``, ``epoch`` (0-based), ``scaler`` and ``args``. Released files pickle ``args`` as an
``argparse.Namespace``; new files store a plain dict plus ``model_name`` (and ``norm_stats`` for
fine-tuned models) so a checkpoint says how to rebuild its model and normalise its inputs.

Loading always uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` and the ``pathlib``
path classes allowlisted (older runs stored ``Path`` values in ``args``; they come back as pure
paths, which never touch the file system and load on any OS), so a file that pickles anything
else (code, arbitrary classes) is refused. Every checkpoint path may also be
``hf://Wolowolo/fsfm-3c/<path in the repository>`` (see ``resolve_checkpoint_path``).
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fsvfm.hub import HUB_SCHEME, HubError, resolve_hub_uri
from fsvfm.util.fileio import atomic_path

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")


# (class rebuilt on load, name in the file): concrete paths become pure ones; "pathlib._local" is
# where Python >= 3.13 defines them.
_PATH_CLASSES = {"PosixPath": pathlib.PurePosixPath, "PurePosixPath": pathlib.PurePosixPath,
                 "WindowsPath": pathlib.PureWindowsPath, "PureWindowsPath": pathlib.PureWindowsPath,
                 "Path": pathlib.PurePath, "PurePath": pathlib.PurePath}
SAFE_GLOBALS = [argparse.Namespace] + [(cls, f"{module}.{name}") for module in ("pathlib", "pathlib._local")
                                       for name, cls in _PATH_CLASSES.items()]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unsafe, malformed or does not fit the model."""


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The local file of a checkpoint path. ``hf://owner/repo/<path>`` is fetched from the Hugging Face
    hub into its cache (with the ``pretrain_ds_mean_std.txt`` beside it, when the repository has one);
    other paths are returned as they are. Raises ``CheckpointError`` naming the repository and path."""
    if not str(path).startswith(HUB_SCHEME):
        return Path(path)
    try:
        return resolve_hub_uri(str(path))
    except HubError as e:
        raise CheckpointError(str(e)) from e


def beside(path: str | os.PathLike, name: str) -> str:
    """The file ``name`` in the folder of a checkpoint path, local or ``hf://`` (not resolved)."""
    if str(path).startswith(HUB_SCHEME):
        return str(path).rsplit("/", 1)[0] + "/" + name
    return str(Path(path).with_name(name))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (local path or ``hf://``). Raises ``CheckpointError`` naming the file on
    any problem."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it pickles objects other than tensors, containers, "
            f"argparse.Namespace and paths, which could run code on load ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, repeatedly."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


MODEL_KEYS = ("model", "state_dict")  # the released FAS ``.pth.tar`` files use ``state_dict``


def model_state_from(checkpoint: Mapping[str, Any], path: str | os.PathLike = "<memory>") -> dict:
    """The un-prefixed model state dict of a loaded checkpoint (its ``model`` or ``state_dict`` entry,
    or the dict itself)."""
    state = next((checkpoint[k] for k in MODEL_KEYS if k in checkpoint), checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no model state dict (expected a 'model' or 'state_dict' entry of tensors)")
    return strip_prefixes(state)


def args_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The run arguments stored in a checkpoint as a plain dict (Namespace in released files)."""
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def save_checkpoint(path: str | os.PathLike, model_state: Mapping[str, torch.Tensor], *,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int | None = None,
                    scaler: Any = None, args: argparse.Namespace | Mapping | None = None,
                    model_name: str | None = None, model_key: str = "model", **extra: Any) -> Path:
    """Atomically write a checkpoint (temp file, then ``os.replace``). Call it on rank 0 only.

    The weights go under ``model_key`` (``model``; the FAS files keep the original's ``state_dict``)."""
    if model_key not in MODEL_KEYS:
        raise ValueError(f"model_key must be one of {MODEL_KEYS}, got {model_key!r}")
    args_map = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    payload: dict[str, Any] = {
        model_key: strip_prefixes(model_state),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "args": _plain(args_map),
        "model_name": model_name or args_map.get("model"),
    }
    payload.update({k: _plain(v) for k, v in extra.items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    logger.info("Saved checkpoint %s", path)
    return path


def load_model_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                       strict: bool = True, source: str | os.PathLike = "<state dict>"):
    """Load weights, explaining a mismatch by key and shape (the file is named in the message).

    With ``strict=False`` shape mismatches still raise; returns torch's (missing, unexpected) result.
    """
    own = model.state_dict()
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if bad_shapes or (strict and (missing or unexpected)):
        lines = [f"checkpoint {source} does not fit {type(model).__name__}:"]
        if bad_shapes:
            lines.append(f"  {len(bad_shapes)} shape mismatch(es): " + "; ".join(bad_shapes[:5]))
        if strict and missing:
            lines.append(f"  {len(missing)} missing key(s): " + ", ".join(missing[:8]))
        if strict and unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:8]))
        raise CheckpointError("\n".join(lines))
    return model.load_state_dict(state_dict, strict=strict)


def find_latest_checkpoint(output_dir: str | os.PathLike, prefix: str = "checkpoint-") -> Path | None:
    """The ``{prefix}{epoch}.pth`` in ``output_dir`` with the highest integer epoch, or None."""
    best: tuple[int, Path] | None = None
    for p in Path(output_dir).glob(f"{prefix}*.pth"):
        tag = p.stem[len(prefix):]
        if tag.isdigit() and (best is None or int(tag) > best[0]):
            best = (int(tag), p)
    return best[1] if best else None


# ------------------------------------------------------------------- resume and save policy
def resume_path(args: argparse.Namespace, prefix: str = "checkpoint-") -> Path | None:
    """``--resume`` (local, or fetched from ``hf://``), else with ``--auto_resume`` the newest
    ``{prefix}{epoch}.pth`` in ``--output_dir``."""
    if args.resume:
        return resolve_checkpoint_path(args.resume)
    if getattr(args, "auto_resume", False):
        latest = find_latest_checkpoint(args.output_dir, prefix)
        if latest is None:
            logger.info("--auto_resume: no checkpoint in %s, starting from scratch", args.output_dir)
        return latest
    return None


def restore_training_state(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: Any, args: argparse.Namespace,
                           fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resume: the model's weights (strict), the optimizer and scaler state (from ``fallback`` when
    the file has none, e.g. a released target-network file), and ``args.start_epoch = epoch + 1``.
    Returns the loaded checkpoint (for best-metric entries)."""
    ckpt = load_checkpoint(path)
    load_model_weights(model, model_state_from(ckpt, path), strict=True, source=path)
    state = ckpt if ckpt.get("optimizer") else (fallback or {})
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler") or {})
    else:
        logger.warning("%s holds no optimizer state; the optimizer starts afresh", path)
    if ckpt.get("epoch") is not None:
        args.start_epoch = int(ckpt["epoch"]) + 1
    return ckpt


def epoch_checkpoint_tags(epoch: int, args: argparse.Namespace, improved: bool, best_tag: str) -> list[str | int]:
    """Checkpoints to write after ``epoch``: ``best_tag`` when the tracked metric improved, and the
    epoch number every ``--save_freq`` epochs and after the last one."""
    tags: list[str | int] = [best_tag] if improved else []
    if (epoch + 1) % args.save_freq == 0 or epoch + 1 == args.epochs:
        tags.append(epoch)
    return tags
