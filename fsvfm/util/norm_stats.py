"""Data-set normalisation statistics (`pretrain_ds_mean_std.txt`: JSON lines, the first is used):
read, write, validate, and resolve them for pre-training, fine-tuning and evaluation (spec 3.11, 4.4).
Computing them over a data set lives with the pre-training data (`util.pretrain_data.compute_mean_std`)."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fsvfm.util.errors import UserError
from fsvfm.util.fileio import atomic_write_text

logger = logging.getLogger(__name__)

STATS_FILENAME = "pretrain_ds_mean_std.txt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
VGGFACE2_STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)


class StatsFileError(UserError, ValueError):
    """A statistics file is missing, empty or malformed."""


def _local(path: str | os.PathLike) -> Path:
    """The local file of a checkpoint path (``hf://`` fetched with its statistics file beside it)."""
    from fsvfm.util.checkpoint import resolve_checkpoint_path  # checkpoint I/O imports the hub
    return resolve_checkpoint_path(path)


def read_mean_std(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """Read ``mean``/``std`` from the first JSON line of ``path``."""
    path = Path(path)
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0].strip()
    except FileNotFoundError as e:
        raise StatsFileError(f"statistics file not found: {path}") from e
    except IndexError as e:
        raise StatsFileError(f"statistics file is empty: {path}") from e
    try:
        obj = json.loads(first)
        mean, std = [float(v) for v in obj["mean"]], [float(v) for v in obj["std"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StatsFileError(f"malformed first line in {path}: {first[:80]!r} ({e})") from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise StatsFileError(f"{path}: need 3 means and 3 positive stds, got {mean} / {std}")
    return mean, std


def write_mean_std(path: str | os.PathLike, mean: list[float], std: list[float]) -> None:
    """Write a one-line statistics file atomically (replacing any earlier one)."""
    atomic_write_text(path, json.dumps({"mean": [float(m) for m in mean], "std": [float(s) for s in std]}) + "\n")


def stats_from_mapping(obj: object, source: str) -> tuple[list[float], list[float]]:
    """Validate a ``{'mean': [3], 'std': [3]}`` mapping (e.g. a checkpoint's ``norm_stats``)."""
    try:
        mean = [float(v) for v in obj["mean"]]  # type: ignore[index]
        std = [float(v) for v in obj["std"]]  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as e:
        raise StatsFileError(f"{source}: expected {{'mean': [...], 'std': [...]}}, got {obj!r:.80}") from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise StatsFileError(f"{source}: need 3 means and 3 positive stds, got {mean} / {std}")
    return mean, std


def resolve_mean_std(*, imagenet: bool = False, embedded: object = None,
                     files: Sequence[str | os.PathLike] = (),
                     fallback: tuple[Sequence[float], Sequence[float]] = (VGGFACE2_MEAN, VGGFACE2_STD),
                     fallback_name: str = "VGGFace2") -> tuple[list[float], list[float], str]:
    """Normalisation statistics, first match wins (spec 4.4, without the silent fallback).

    Order: ImageNet when ``imagenet``; ``embedded`` (a checkpoint's ``norm_stats``) when not None;
    the first readable file of ``files``; otherwise ``fallback`` with a warning naming every file
    that was tried and the values used. Returns ``(mean, std, source)``.
    """
    if imagenet:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (--normalize_from_IMN)"
    if embedded is not None:
        mean, std = stats_from_mapping(embedded, "checkpoint norm_stats")
        return mean, std, "checkpoint norm_stats"
    problems = []
    for f in files:
        try:
            mean, std = read_mean_std(f)
            return mean, std, str(f)
        except StatsFileError as e:
            problems.append(str(e))
    mean, std = [float(v) for v in fallback[0]], [float(v) for v in fallback[1]]
    logger.warning("No usable normalisation statistics (%s); using the %s statistics mean=%s std=%s",
                   "; ".join(problems) or "no file given", fallback_name, mean, std)
    return mean, std, f"{fallback_name} fallback"


def finetune_mean_std(output_dir: str | os.PathLike, finetune: str | os.PathLike | None,
                      imagenet: bool = False, resumed: bool = True) -> tuple[list[float], list[float], str]:
    """Spec 4.4, training side: ``output_dir``'s statistics file, then the one next to the
    pre-trained checkpoint ``finetune`` (a fresh run, ``resumed=False``, tries that one first); a
    warning names what was missing, and another both files when they differ (the output folder holds
    statistics of another data set). The caller records the result in ``output_dir``
    (:func:`record_mean_std`) for the test programs."""
    files = [Path(output_dir) / STATS_FILENAME]
    if finetune:
        files.append(_local(finetune).parent / STATS_FILENAME)  # hf:// too
    if not resumed:
        files.reverse()
    if not imagenet and len(files) == 2:
        _warn_if_different(files)
    return resolve_mean_std(imagenet=imagenet, files=files)


def _warn_if_different(files: Sequence[Path]) -> None:
    try:
        first, second = read_mean_std(files[0]), read_mean_std(files[1])
    except StatsFileError:
        return
    if first != second:
        logger.warning("normalisation statistics differ: %s has mean %s std %s, %s has mean %s std %s (another "
                       "data set?); this run uses %s", files[0], *first, files[1], *second, files[0])


def checkpoint_mean_std(checkpoint: Mapping, path: str | os.PathLike,
                        imagenet: bool = False) -> tuple[list[float], list[float], str]:
    """Spec 4.4, evaluation side: the checkpoint's ``norm_stats``, else the statistics file next to it."""
    return resolve_mean_std(imagenet=imagenet, embedded=checkpoint.get("norm_stats"),
                            files=[_local(path).parent / STATS_FILENAME])


def record_mean_std(output_dir: str | os.PathLike, mean: list[float], std: list[float],
                    replace: bool = False) -> None:
    """Write ``output_dir``'s statistics file unless it exists (call on rank 0); with ``replace`` an
    existing file holding other values is rewritten."""
    path = Path(output_dir) / STATS_FILENAME
    if not path.exists():
        write_mean_std(path, mean, std)
    elif replace:
        try:
            same = read_mean_std(path) == (list(mean), list(std))
        except StatsFileError:
            same = False
        if not same:
            write_mean_std(path, mean, std)
