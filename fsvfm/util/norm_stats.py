"""Data-set normalisation statistics (``pretrain_ds_mean_std.txt``: JSON lines, the first is used)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from fsvfm.util.fileio import atomic_write_text

STATS_FILENAME = "pretrain_ds_mean_std.txt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
VGGFACE2_STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)


class StatsFileError(ValueError):
    """A statistics file is missing, empty or malformed."""


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
