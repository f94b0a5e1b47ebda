"""Checkpoint I/O, in one place.

File format (compatible with the released weights): a dict with ``model`` (state dict),
``optimizer``, ``epoch`` (0-based), ``scaler`` and ``args``. Released files pickle ``args`` as an
``argparse.Namespace``; new files store a plain dict plus ``model_name`` (and ``norm_stats`` for
fine-tuned models) so a checkpoint says how to rebuild its model and normalise its inputs.

Loading always uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` and the ``pathlib``
path classes allowlisted (older runs stored ``Path`` values in ``args``; they come back as pure
paths, which never touch the file system and load on any OS), and numpy float64 scalars (the released
FAS files' metrics), so a file that pickles anything
else (code, arbitrary classes) is refused. Every checkpoint path may also be
``hf://Wolowolo/fsfm-3c/<path in the repository>`` (see ``resolve_checkpoint_path``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import pathlib
import pickle
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models import clean_state_dict

from fsvfm.util.errors import UserError
from fsvfm.util.fileio import atomic_link, atomic_path, fsync_path
from fsvfm.util.hub_io import HUB_SCHEME, HubError, resolve_hub_uri

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")


# (class rebuilt on load, name in the file): concrete paths become pure ones; "pathlib._local" is
# where Python >= 3.13 defines them.
_PATH_CLASSES = {"PosixPath": pathlib.PurePosixPath, "PurePosixPath": pathlib.PurePosixPath,
                 "WindowsPath": pathlib.PureWindowsPath, "PureWindowsPath": pathlib.PureWindowsPath,
                 "Path": pathlib.PurePath, "PurePath": pathlib.PurePath}
# NumPy scalars (the released FAS files store np.float64 metrics) pickle as ``scalar(dtype, bytes)``:
# ``numpy.core`` under numpy 1.x, which wrote the releases, ``numpy._core`` under 2.x. Only these
# reconstructors, ``numpy.dtype`` and the float64 dtype class (whose state ``BUILD`` sets) are allowed.
_NUMPY_SCALAR = getattr(np, "_core", getattr(np, "core", None)).multiarray.scalar
_NUMPY_GLOBALS = [(_NUMPY_SCALAR, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")] + [
    np.dtype, type(np.dtype(np.float64))]
SAFE_GLOBALS = [argparse.Namespace] + [(cls, f"{module}.{name}") for module in ("pathlib", "pathlib._local")
                                       for name, cls in _PATH_CLASSES.items()] + _NUMPY_GLOBALS


class CheckpointError(UserError, RuntimeError):
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
    _check_format(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it pickles objects other than tensors, containers, "
            f"argparse.Namespace, paths and numpy float64 scalars, which could run code on load ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


# First bytes of files that are not checkpoints, to name what was given instead.
_OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                  b"BM": "a BMP image", b"RIFF": "a RIFF (WebP/AVI) file", b"{": "a JSON/text file"}


def _check_format(path: Path) -> None:
    """Refuse, before unpickling, a file that is neither a zip-format (``PK\\x03\\x04``) nor a legacy pickle
    (``\\x80``) PyTorch file: an image or a text file is not a "malicious pickle"."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return
    if not head:
        raise CheckpointError(f"{path} is empty (an interrupted copy or save?); give a complete checkpoint file")
    kind = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    raise CheckpointError(f"{path} is not a PyTorch checkpoint" + (f": it is {kind}" if kind else
                          f" (it starts with bytes {head!r})") + "; give a .pth file saved by torch.save")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes with timm's
    ``clean_state_dict``, until none is left: it removes each prefix once, and the original's double DDP
    wrap (DEVIATIONS.md P1) nests them deeper."""
    state = dict(state_dict)
    while any(key.startswith(_PREFIXES) for key in state):
        state = clean_state_dict(state)
    return state


MODEL_KEYS = ("model", "state_dict")  # the released FAS ``.pth.tar`` files use ``state_dict``


def model_state_from(checkpoint: Mapping[str, Any], path: str | os.PathLike = "<memory>") -> dict:
    """The un-prefixed model state dict of a loaded checkpoint (its ``model`` or ``state_dict`` entry,
    or the dict itself)."""
    state = next((checkpoint[k] for k in MODEL_KEYS if k in checkpoint), checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no model state dict (expected a 'model' or 'state_dict' entry of tensors)")
    check_finite_state(state, f"checkpoint {path}", hint="; it cannot be used: take an earlier checkpoint")
    return strip_prefixes(state)


def args_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The run arguments stored in a checkpoint as a plain dict (Namespace in released files)."""
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


NEAR_CHANCE_AUC = 0.6   # a detector whose own validation AUC is below this separates almost nothing


def model_warnings(checkpoint: Mapping[str, Any]) -> list[str]:
    """What a reader of this detector's scores must know: trained as a demo (``args.demo``), or near
    chance on its own validation data (``val_auc``; FAS files: ``valid_arg[4]``). [] for a sound model."""
    args = args_dict(checkpoint)
    out = []
    if args.get("demo"):
        out.append("this detector was trained by the demo on toy data: its scores mean nothing")
    auc = checkpoint.get("val_auc")
    valid_arg = checkpoint.get("valid_arg")
    if auc is None and isinstance(valid_arg, (list, tuple)) and len(valid_arg) > 4:
        auc = valid_arg[4]
    if isinstance(auc, (int, float)) and auc == auc:
        auc = auc / 100 if auc > 1 else float(auc)     # the DfD runs store percent, FAS a fraction
        if max(auc, 1 - auc) < NEAR_CHANCE_AUC:
            epochs = args.get("epochs")
            trained = f" after {epochs} epoch(s)" if epochs is not None else ""
            out.append(f"this detector is near chance on its own validation data (AUC {auc:.3f}{trained}): "
                       "its scores are not verdicts")
    return out


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
    """Atomically write a checkpoint (temp file, ``fsync``, then ``os.replace``). Call it on rank 0 only.

    The weights go under ``model_key`` (``model``; the FAS files keep the original's ``state_dict``)."""
    path = Path(path)
    # through a Python file object: a full disk is then an OSError (ENOSPC), not torch's "unexpected pos"
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint_payload(model_state, optimizer=optimizer, epoch=epoch, scaler=scaler, args=args,
                                      model_name=model_name, model_key=model_key, **extra), f)
    logger.info("Saved checkpoint %s", path)
    return path


def checkpoint_payload(model_state: Mapping[str, torch.Tensor], *, optimizer: torch.optim.Optimizer | None = None,
                       epoch: int | None = None, scaler: Any = None, args: argparse.Namespace | Mapping | None = None,
                       model_name: str | None = None, model_key: str = "model", **extra: Any) -> dict[str, Any]:
    """The dict a checkpoint file holds (see the module docstring); the weights go under ``model_key``;
    ``extra`` entries are made plain."""
    if model_key not in MODEL_KEYS:
        raise ValueError(f"model_key must be one of {MODEL_KEYS}, got {model_key!r}")
    args_map = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    payload: dict[str, Any] = {model_key: strip_prefixes(model_state), "epoch": epoch, "args": _plain(args_map),
                               "model_name": model_name or args_map.get("model")}
    # No optimizer / a disabled scaler: the key is left out (the original resumes only when it is absent).
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    scaler_state = scaler.state_dict() if scaler is not None else None
    if scaler_state:
        payload["scaler"] = scaler_state
    payload.update({k: _plain(v) for k, v in extra.items()})
    return payload


# Bounds on the size settings a checkpoint may ask for (stored ``model_kwargs``, ``input_size``): far above
# every released model (ViT-H: depth 32, width 1280), far below what exhausts memory before a check.
MODEL_KWARG_BOUNDS: dict[str, tuple[float, float]] = {
    "depth": (1, 128), "embed_dim": (8, 8192), "num_heads": (1, 256), "patch_size": (1, 512),
    "img_size": (8, 4096), "mlp_ratio": (0.1, 16), "num_classes": (1, 100_000), "adapter_reduction": (1, 1024)}
MAX_MODEL_PARAMETERS = 4e9  # about 12 x depth x width^2 per ViT: ViT-H has 0.63e9


def _bounds_of(key: str) -> tuple[float, float] | None:
    if key in MODEL_KWARG_BOUNDS:
        return MODEL_KWARG_BOUNDS[key]
    for suffix in ("depth", "embed_dim", "num_heads", "size", "dim"):  # decoder_depth, projection_size, ...
        if key.endswith(suffix):
            return MODEL_KWARG_BOUNDS.get(suffix, MODEL_KWARG_BOUNDS["embed_dim"])
    return None


def check_model_kwargs(kwargs: Mapping[str, Any], source: str | os.PathLike) -> None:
    """``CheckpointError`` when a checkpoint's model settings are out of ``MODEL_KWARG_BOUNDS`` or describe a
    network of more than ``MAX_MODEL_PARAMETERS``: refused before anything is allocated."""
    for key, value in kwargs.items():
        bounds = _bounds_of(key)
        if bounds is None or isinstance(value, bool) or value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not bounds[0] <= value <= bounds[1]:
            raise CheckpointError(f"{source}: stored model setting {key}={value!r} is outside {bounds[0]:g}..{bounds[1]:g}; "
                                  "the file is damaged or not an FS-VFM checkpoint")
    depth, width = kwargs.get("depth"), kwargs.get("embed_dim")
    if isinstance(depth, (int, float)) and isinstance(width, (int, float)) and 12 * depth * width ** 2 > MAX_MODEL_PARAMETERS:
        raise CheckpointError(f"{source}: stored model settings depth={depth}, embed_dim={width} describe a network of "
                              f"about {12 * depth * width ** 2 / 1e9:.0f} billion parameters; refused")


def weights_mismatch(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], model_name: str,
                     source: str | os.PathLike, strict: bool = True) -> CheckpointError | None:
    """The error explaining by key and shape why ``state_dict`` does not fit a model whose state dict is
    ``own`` (shapes only: ``own`` may live on the meta device), or None."""
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if not (bad_shapes or (strict and (missing or unexpected))):
        return None
    lines = [f"checkpoint {source} does not fit {model_name}:"]
    if bad_shapes:
        lines.append(f"  {len(bad_shapes)} shape mismatch(es): " + "; ".join(bad_shapes[:5]))
    if strict and missing:
        lines.append(f"  {len(missing)} missing key(s): " + ", ".join(missing[:8]))
    if strict and unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:8]))
    return CheckpointError("\n".join(lines))


def build_for_weights(build: Callable[[], torch.nn.Module], state_dict: Mapping[str, torch.Tensor],
                      source: str | os.PathLike, name: str = "", strict: bool = True) -> torch.nn.Module:
    """``build()`` with ``state_dict`` loaded, after checking on the meta device (no memory, well under a
    second even for ViT-H) that the weights fit: a file whose weights belong to another model is refused
    before the real network is allocated."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except TypeError as e:  # a stored setting the model does not take
        raise CheckpointError(f"{source}: cannot build {name or 'its model'} from its stored settings ({e})") from e
    label = type(skeleton).__name__ + (f" ({name})" if name else "")
    error = weights_mismatch(skeleton.state_dict(), state_dict, label, source, strict)
    del skeleton
    if error is not None:
        raise error
    model = build()
    load_model_weights(model, state_dict, strict=strict, source=source)
    return model


def load_model_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                       strict: bool = True, source: str | os.PathLike = "<state dict>"):
    """Load weights, explaining a mismatch by key and shape (the file is named in the message).

    With ``strict=False`` shape mismatches still raise; returns torch's (missing, unexpected) result.
    """
    error = weights_mismatch(model.state_dict(), state_dict, type(model).__name__, source, strict)
    if error is not None:
        raise error
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
        path = resolve_checkpoint_path(args.resume)
        if not path.is_file():
            raise CheckpointError(f"--resume checkpoint not found: {path}")
        return path
    if getattr(args, "auto_resume", False):
        latest = find_latest_checkpoint(args.output_dir, prefix)
        if latest is None:
            logger.info("--auto_resume: no checkpoint in %s, starting from scratch", args.output_dir)
        return latest
    return None


def restore_training_state(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: Any, args: argparse.Namespace,
                           fallback: Mapping[str, Any] | None = None,
                           checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resume: the model's weights (strict), the optimizer and scaler state (from ``fallback`` when
    the file has none, e.g. a released target-network file), and ``args.start_epoch = epoch + 1``.
    ``checkpoint``: the file's content when already loaded (e.g. by ``load_checkpoint_set``).
    Returns the loaded checkpoint (for best-metric entries)."""
    ckpt = dict(checkpoint) if checkpoint is not None else load_checkpoint(path)
    load_model_weights(model, model_state_from(ckpt, path), strict=True, source=path)
    state = ckpt if ckpt.get("optimizer") else (fallback or {})
    if state.get("optimizer"):
        load_optimizer_state(optimizer, state["optimizer"], path)
        scaler.load_state_dict(state.get("scaler") or {})
    else:
        logger.warning("%s holds no optimizer state; the optimizer starts afresh", path)
    if ckpt.get("epoch") is not None:
        args.start_epoch = int(ckpt["epoch"]) + 1
    return ckpt


_GROUP_KEYS = ("weight_decay", "lr_scale")


def _group_signature(group: Mapping[str, Any], shapes: list) -> tuple:
    return tuple(group.get(k) for k in _GROUP_KEYS) + (len(group["params"]), tuple(shapes))


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load ``saved`` (an optimizer state dict) into ``optimizer`` whatever the order of its parameter
    groups: another implementation (the original's timm) registers the layer-decay groups in another
    order, so each saved group is matched to the group holding the same parameters, told by its weight
    decay, lr scale, size and the shapes of its parameters' state. ``CheckpointError`` naming ``path``
    when the groups cannot be matched one to one."""
    own = optimizer.state_dict()
    saved_groups, state = list(saved.get("param_groups", [])), saved.get("state", {})
    own_shapes = [[tuple(optimizer.param_groups[i]["params"][j].shape) for j in range(len(g["params"]))]
                  for i, g in enumerate(own["param_groups"])]

    def saved_shapes(group):  # parameters without state (never stepped) cannot be told apart by shape
        return [tuple(state[i]["exp_avg"].shape) if "exp_avg" in state.get(i, {}) else None for i in group["params"]]

    def fits(saved_group, j):
        want = _group_signature(own["param_groups"][j], own_shapes[j])
        got = _group_signature(saved_group, saved_shapes(saved_group))
        return want[:-1] == got[:-1] and all(s is None or s == w for s, w in zip(got[-1], want[-1]))

    cannot = f"{path}: its optimizer state does not fit this model's parameter groups"
    if len(saved_groups) != len(own["param_groups"]):
        raise CheckpointError(f"{cannot} ({len(saved_groups)} groups in the file, {len(own['param_groups'])} here); "
                              "resume with the same --model, --layer_decay and trainable modules, or use --finetune")
    order = list(range(len(saved_groups)))
    if not all(fits(g, j) for g, j in zip(saved_groups, order)):
        candidates = [[j for j in range(len(saved_groups)) if fits(g, j)] for g in saved_groups]
        order = [c[0] if len(c) == 1 else None for c in candidates]
        if None in order or len(set(order)) != len(order):
            raise CheckpointError(f"{cannot} (groups cannot be matched one to one by weight decay, lr scale and "
                                  "parameter shapes); resume with the run's own settings, or use --finetune")
        logger.info("%s: optimizer groups in another order (%s); matched by their parameters", path, order)
    groups: list[Any] = [None] * len(saved_groups)
    new_state = {}
    for g, j in zip(saved_groups, order):
        groups[j] = {**g, "params": own["param_groups"][j]["params"]}
        new_state.update({ours: state[theirs] for theirs, ours in zip(g["params"], groups[j]["params"])
                          if theirs in state})
    try:
        optimizer.load_state_dict({"state": new_state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{cannot}: {e}") from e


def epoch_checkpoint_tags(epoch: int, args: argparse.Namespace, improved: bool, best_tag: str) -> list[str | int]:
    """Checkpoints to write after ``epoch``: ``best_tag`` when the tracked metric improved, and the
    epoch number every ``--save_freq`` epochs and after the last one."""
    tags: list[str | int] = [best_tag] if improved else []
    if (epoch + 1) % args.save_freq == 0 or epoch + 1 == args.epochs:
        tags.append(epoch)
    return tags


# ------------------------------------------------------------------- non-finite weights
class NonFiniteWeightsError(CheckpointError):
    """Weights hold NaN or infinite values: never saved, never loaded."""


def check_finite_state(state: Mapping[str, torch.Tensor] | torch.nn.Module, name: str, hint: str = "") -> None:
    """Raise ``NonFiniteWeightsError`` naming ``name`` (a file or a model) and its first non-finite
    tensors when any floating-point tensor of ``state`` (a state dict, or a module's parameters and
    buffers) holds NaN or +-inf; ``hint`` is appended to the message."""
    items = state.state_dict().items() if isinstance(state, torch.nn.Module) else state.items()
    floating = [(k, t) for k, t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]
    bad = [(k, t) for k, t in floating if not bool(torch.isfinite(t).all())]
    if not bad:
        return
    first = ", ".join(f"{k} ({int(t.isnan().sum())} NaN, {int(t.isinf().sum())} inf of {t.numel()})"
                      for k, t in bad[:3])
    raise NonFiniteWeightsError(f"{name} holds non-finite weights in {len(bad)} of {len(floating)} tensors, "
                                f"first: {first}{hint}")


# ------------------------------------------------------------------- checkpoint sets
# A set is several files written for one epoch that are only usable together (pre-training: the online
# network with its optimizer and the target network). ``save_checkpoint_set`` writes every member to a
# temp file, removes the tag's manifest, fsyncs and renames the members into place, then writes the
# manifest ``checkpoint-{tag}.set.json`` (atomic, fsynced) last: a set is complete exactly when its
# manifest exists and every member carries the manifest's run id and epoch. A kill at any moment leaves
# the previous complete sets readable; ``load_latest_checkpoint_set`` skips anything else.
PRETRAIN_SET = {"online": "checkpoint-{tag}.pth", "target": "checkpoint-te-{tag}.pth"}
MANIFEST_TEMPLATE = "checkpoint-{tag}.set.json"
DRILL_ENV = "FSVFM_DRILL_PAUSE_AT"  # tests: pause (sleep) at a named moment of a set save, to be killed there


def new_run_id() -> str:
    """A fresh id stored in every checkpoint of a set (and its manifest)."""
    return uuid.uuid4().hex


def _drill_pause(stage: str) -> None:
    if os.environ.get(DRILL_ENV) == stage:
        logger.warning("checkpoint drill: pausing at %s", stage)
        time.sleep(float(os.environ.get("FSVFM_DRILL_PAUSE_S", "60")))


def save_checkpoint_set(folder: str | os.PathLike, tag: str | int, payloads: Mapping[str, Mapping[str, Any]], *,
                        epoch: int, run_id: str, names: Mapping[str, str] = PRETRAIN_SET) -> Path:
    """Write one checkpoint set (rank 0 only): ``payloads`` maps a role of ``names`` (role -> file name
    template with ``{tag}``) to a ``checkpoint_payload``; each member gets ``run_id``, ``epoch`` and
    ``set_role``. Returns the manifest path. Complete-or-absent: see the comment above."""
    folder = Path(folder)
    manifest = folder / MANIFEST_TEMPLATE.format(tag=tag)
    files = {role: folder / names[role].format(tag=tag) for role in payloads}
    with contextlib.ExitStack() as stack:
        for i, (role, payload) in enumerate(payloads.items()):
            tmp = stack.enter_context(atomic_path(files[role], durable=True))
            with open(tmp, "wb") as f:  # a full disk: OSError, not "unexpected pos" (see save_checkpoint)
                torch.save({**payload, "run_id": run_id, "epoch": epoch, "set_role": role}, f)
            if i == 0:  # runs on exit after the later members are renamed, before this one is
                stack.callback(_drill_pause, "between-renames")
        manifest.unlink(missing_ok=True)
        fsync_path(folder)
        _drill_pause("before-renames")
    _drill_pause("before-manifest")
    record = {"tag": str(tag), "epoch": epoch, "run_id": run_id,
              "files": {role: {"name": p.name, "size": p.stat().st_size} for role, p in files.items()}}
    with atomic_path(manifest, durable=True) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info("Saved checkpoint set %s: %s", manifest.name, ", ".join(p.name for p in files.values()))
    return manifest


def link_checkpoint_set(folder: str | os.PathLike, src_tag: str | int, tag: str | int,
                        names: Mapping[str, str] = PRETRAIN_SET) -> Path:
    """Give the complete set ``src_tag`` the second name ``tag`` (e.g. the best epoch is also the last):
    hard links (copies where links are impossible), so the weights are on disk once; a later save
    under ``tag`` replaces the names only. Same complete-or-absent order as ``save_checkpoint_set``."""
    folder = Path(folder)
    record = json.loads((folder / MANIFEST_TEMPLATE.format(tag=src_tag)).read_text(encoding="utf-8"))
    manifest = folder / MANIFEST_TEMPLATE.format(tag=tag)
    manifest.unlink(missing_ok=True)
    files = {}
    for role, entry in record["files"].items():
        dst = atomic_link(folder / entry["name"], folder / names[role].format(tag=tag))
        files[role] = {"name": dst.name, "size": entry["size"]}
    with atomic_path(manifest, durable=True) as tmp:
        Path(tmp).write_text(json.dumps({**record, "tag": str(tag), "files": files}, indent=1) + "\n", encoding="utf-8")
    logger.info("Linked checkpoint set %s to %s (one copy on disk)", manifest.name, MANIFEST_TEMPLATE.format(tag=src_tag))
    return manifest


def check_same_set(checkpoints: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> None:
    """``checkpoints``: role -> (path, loaded checkpoint). Raise ``CheckpointError`` naming the files
    when they come from different runs (``run_id``) or epochs (each compared when every file has it)."""
    for key in ("run_id", "epoch"):
        values = {role: ckpt.get(key) for role, (_, ckpt) in checkpoints.items()}
        if None in values.values():
            continue
        if len(set(map(str, values.values()))) > 1:
            listing = ", ".join(f"{checkpoints[r][0]} has {key} {v}" for r, v in values.items())
            raise CheckpointError(f"these checkpoints do not belong together: {listing}; "
                                  "resume from a pair written by the same save")


@dataclass
class CheckpointSet:
    """A loaded, verified set: ``paths`` and ``checkpoints`` by role."""

    tag: str
    epoch: int | None
    paths: dict[str, Path]
    checkpoints: dict[str, dict[str, Any]]


def load_checkpoint_set(paths: Mapping[str, str | os.PathLike], tag: str = "") -> CheckpointSet:
    """Load every member (``CheckpointError`` naming a missing or unreadable one) and check that they
    belong together (``check_same_set``)."""
    local = {role: resolve_checkpoint_path(p) for role, p in paths.items()}
    loaded = {role: (p, load_checkpoint(p)) for role, p in local.items()}
    check_same_set(loaded)
    first = next(iter(loaded.values()))[1]
    return CheckpointSet(tag, first.get("epoch"), {r: p for r, (p, _) in loaded.items()},
                         {r: c for r, (_, c) in loaded.items()})


def _verified_set(folder: Path, tag: int, names: Mapping[str, str]) -> CheckpointSet:
    """The set of ``tag`` in ``folder`` if complete and readable, else ``CheckpointError`` saying why."""
    paths = {role: folder / t.format(tag=tag) for role, t in names.items()}
    manifest = folder / MANIFEST_TEMPLATE.format(tag=tag)
    record = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
    if record is not None:
        for role, entry in record["files"].items():
            if not paths[role].is_file():
                raise CheckpointError(f"{paths[role]} is missing")
            size = paths[role].stat().st_size
            if size != entry["size"]:
                raise CheckpointError(f"{paths[role]} is {size} bytes, its manifest says {entry['size']}")
    loaded = load_checkpoint_set(paths, str(tag))
    if record is None and any(c.get("run_id") for c in loaded.checkpoints.values()):
        raise CheckpointError(f"no {manifest.name}: the save of this set was interrupted")
    if record is not None and any(c.get("run_id") != record["run_id"] or c.get("epoch") != record["epoch"]
                                  for c in loaded.checkpoints.values()):
        raise CheckpointError(f"the files of set {tag} are not the ones its manifest lists")
    return loaded


def load_latest_checkpoint_set(folder: str | os.PathLike,
                               names: Mapping[str, str] = PRETRAIN_SET) -> CheckpointSet | None:
    """The complete, readable set with the highest integer tag in ``folder`` (``--auto_resume``), or
    None. Newer sets that are incomplete (interrupted save), truncated, unreadable or mismatched are
    skipped with a warning saying why. Sets saved before manifests existed (no ``run_id`` in the files)
    count as complete when every member loads and the epochs agree."""
    folder = Path(folder)
    first = names[next(iter(names))]
    prefix, suffix = first.split("{tag}")
    tags = sorted({int(p.name[len(prefix):len(p.name) - len(suffix)]) for p in folder.glob(first.format(tag="*"))
                   if p.name[len(prefix):len(p.name) - len(suffix)].isdigit()}, reverse=True)
    for tag in tags:
        try:
            found = _verified_set(folder, tag, names)
        except (CheckpointError, OSError, ValueError, KeyError) as e:
            logger.warning("--auto_resume: skipping checkpoint set %d: %s", tag, e)
            continue
        return found
    return None


# ------------------------------------------------------------------- resume hygiene
_TEMP_NAME = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp files (``.{name}.{random}.tmp[.ext]``) that a killed save left in
    ``folder``; call on rank 0 at start, before any save. Returns the removed paths."""
    folder = Path(folder)
    removed = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if _TEMP_NAME.match(p.name) and p.is_file():
            size = p.stat().st_size
            p.unlink()
            removed.append(p)
            logger.info("removed stale temp file %s (%.1f MB) left by an interrupted save", p, size / 2**20)
    return removed


def drop_log_records_from(path: str | os.PathLike, epoch: int) -> int:
    """Rewrite a JSON-lines ``log.txt`` without the records of ``epoch`` and later (a resumed run logs
    them again); lines that are not JSON objects with an ``epoch`` stay. Returns the number dropped."""
    return drop_log_records(path, lambda r: isinstance(r.get("epoch"), int) and r["epoch"] >= epoch,
                            f"of epoch >= {epoch}")


def drop_log_records(path: str | os.PathLike, drop: Callable[[dict], bool], what: str = "") -> int:
    """Rewrite a JSON-lines log without the JSON-object records for which ``drop(record)`` is true (a
    resumed run logs them again); other lines stay. Returns the number dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and drop(record):
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(kept), encoding="utf-8")
        logger.info("%s: dropped %d record(s) %s (they are logged again)", path, dropped, what)
    return dropped


def best_value_in(path: str | os.PathLike, key: str) -> float:
    """``key`` (e.g. ``min_val_loss``) of a best-metric checkpoint; +inf when the file is absent or
    unreadable (with a warning), so a missing best never blocks a save."""
    if not Path(path).is_file():
        return math.inf
    try:
        return float(load_checkpoint(path).get(key, math.inf))
    except (CheckpointError, TypeError, ValueError) as e:
        logger.warning("cannot read %s from %s (%s); it will be replaced by the next best", key, path, e)
        return math.inf
