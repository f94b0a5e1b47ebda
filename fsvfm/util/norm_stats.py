"""Data-set normalisation statistics (`pretrain_ds_mean_std.txt`: JSON lines, the first is used):
compute them over a data set, read, write, validate, and resolve them for pre-training, fine-tuning and
evaluation.

Pre-training records which data roots the statistics were computed from (``"data_paths"`` in the JSON
line; files written before, and ImageNet statistics, have none), so a run into a folder that holds the
statistics of another data set is refused instead of silently training with them.

"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fsvfm.util.checkpoint import resolve_checkpoint_path
from fsvfm.util.errors import DataError, UsageError, UserError
from fsvfm.util.fileio import atomic_write_text
from fsvfm.util.naming import STATS_FILENAME

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
VGGFACE2_STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)


class StatsFileError(UserError, ValueError):
    """A statistics file is missing, empty or malformed."""


def read_mean_std(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """Read ``mean``/``std`` from the first JSON line of ``path``."""
    return _read_record(path)[0]


def _read_record(path: str | os.PathLike) -> tuple[tuple[list[float], list[float]], dict]:
    """The validated ``(mean, std)`` of ``path``'s first JSON line, and the whole line's object."""
    path = Path(path)
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0].strip()
    except FileNotFoundError as e:
        raise StatsFileError(f"statistics file not found: {path}") from e
    except IndexError as e:
        raise StatsFileError(f"statistics file is empty: {path}") from e
    try:
        obj = json.loads(first)
    except json.JSONDecodeError as e:
        raise StatsFileError(f"malformed first line in {path}: {first[:80]!r} ({e})") from e
    return stats_from_mapping(obj, f"first line of {path}"), obj


def write_mean_std(path: str | os.PathLike, mean: list[float], std: list[float],
                   data_paths: Sequence[str] | None = None) -> None:
    """Write a one-line statistics file atomically (replacing any earlier one); ``data_paths``: the data
    roots the statistics were computed from, recorded as ``"data_paths"``."""
    record: dict = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    if data_paths is not None:
        record["data_paths"] = [str(p) for p in data_paths]
    atomic_write_text(path, json.dumps(record) + "\n")


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
    """Normalisation statistics, first match wins (without the silent fallback).

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
        files.append(resolve_checkpoint_path(finetune).parent / STATS_FILENAME)  # hf:// too
    if not resumed:
        files.reverse()
    if not imagenet and len(files) == 2:
        with contextlib.suppress(StatsFileError):  # an unreadable first file: resolve_mean_std says so
            warn_if_stale(files[1], *read_mean_std(files[0]), files[0])
    return resolve_mean_std(imagenet=imagenet, files=files)


def warn_if_stale(path: str | os.PathLike, mean: Sequence[float], std: Sequence[float], source: object) -> bool:
    """Warn when the statistics file ``path`` (an output folder's, say) holds other values than the ``mean``/``std``
    this run uses (from ``source``); True when it did. An absent or unreadable file is no warning."""
    try:
        recorded = read_mean_std(path)
    except StatsFileError:
        return False
    if recorded == ([float(m) for m in mean], [float(s) for s in std]):
        return False
    logger.warning("normalisation statistics differ: %s has mean %s std %s, %s has mean %s std %s (another "
                   "data set?); this run uses %s", source, list(mean), list(std), path, *recorded, source)
    return True


def checkpoint_mean_std(checkpoint: Mapping, path: str | os.PathLike,
                        imagenet: bool = False) -> tuple[list[float], list[float], str]:
    """Spec 4.4, evaluation side: the checkpoint's ``norm_stats``, else the statistics file next to it."""
    return resolve_mean_std(imagenet=imagenet, embedded=checkpoint.get("norm_stats"),
                            files=[resolve_checkpoint_path(path).parent / STATS_FILENAME])


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


# ------------------------------------------------------------------------- computing (pre-training)
MIN_STD = 1e-6  # below it a channel is constant (up to float64 rounding): normalising would divide by ~0


class _ImageMoments:
    """Map-style data set, per image: float64 [7] = per-channel sums (3), sums of squares (3), pixel count
    (zeros for an unreadable image, which is logged)."""

    def __init__(self, paths: Sequence[Path], input_size: int) -> None:
        self.paths, self.size = list(paths), input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        from fsvfm.util.images import UnreadableImageError, read_rgb
        try:
            img = TF.pil_to_tensor(read_rgb(self.paths[index])).float().div_(255)
        except UnreadableImageError as e:
            logger.warning("mean/std: skipping %s", e)
            return torch.zeros(7, dtype=torch.float64)
        if list(img.shape[-2:]) != [self.size, self.size]:
            img = TF.resize(img, [self.size, self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = img.double()
        count = torch.tensor([img[0].numel()], dtype=torch.float64)
        return torch.cat([img.sum(dim=(1, 2)), (img * img).sum(dim=(1, 2)), count])


def compute_mean_std(image_paths: Sequence[Path], input_size: int, batch_size: int = 64, num_workers: int = 0,
                     device=None) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of the images in [0, 1] after resizing to ``input_size``.

    Exact pixel moments over every image (the original averaged per-batch moments and dropped the
    last partial batch). Under DDP each rank reads an interleaved shard and the sums are
    all-reduced, so every image is read once and all ranks get the same result. ``DataError`` when
    no image is readable or a channel is constant (std below ``MIN_STD``).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from fsvfm.util import dist
    shard = list(image_paths)[dist.get_rank()::dist.get_world_size()]
    loader = DataLoader(_ImageMoments(shard, input_size), batch_size=batch_size, num_workers=num_workers)
    acc = torch.zeros(7, dtype=torch.float64)
    for batch in tqdm(loader, desc="data-set mean/std", disable=not dist.is_main_process()):
        acc += batch.sum(dim=0)
    acc = dist.all_reduce_sum(acc.to(device or "cpu")).cpu()
    where = f"the {len(image_paths)} images under {Path(image_paths[0]).parent}" if image_paths else "no images"
    if acc[6] == 0:
        raise DataError(f"cannot compute the data-set mean/std: no readable image among {where}")
    mean = acc[:3] / acc[6]
    std = (acc[3:6] / acc[6] - mean * mean).clamp_min(0).sqrt()
    if float(std.min()) < MIN_STD:
        raise DataError(f"{where} have standard deviation {[round(float(s), 9) for s in std]} per channel: "
                        "every pixel has the same value in a channel (blank or constant images?); "
                        "check the data set, or use --normalize_from_IMN")
    return mean.tolist(), std.tolist()


def resolve_pretrain_mean_std(output_dir: str | os.PathLike, image_paths: Sequence[Path], input_size: int,
                              normalize_from_imn: bool, batch_size: int = 64, num_workers: int = 0,
                              device=None, *, data_paths: Sequence[str | os.PathLike] = (),
                              resumed: bool = False) -> tuple[list[float], list[float]]:
    """Mean/std for the run, recorded as the first (only) line of ``output_dir/pretrain_ds_mean_std.txt``
    with the data roots ``data_paths`` (absolute).

    ``normalize_from_imn``: ImageNet statistics, also written to the file so fine-tuning never falls
    back to other statistics silently (P10). Otherwise an existing file is reused when it records the
    same data roots (or none, an older file); when it records other roots, a fresh run is refused
    (``UsageError``: the folder belongs to another data set) and a resumed run keeps them with a warning
    (its checkpoint was trained with them). Without a usable file the statistics are computed once over
    the data set; nothing is written when that fails. Call on every rank.
    """
    from fsvfm.util import dist
    path = Path(output_dir) / STATS_FILENAME
    roots = [str(Path(p).resolve()) for p in data_paths]
    existing, recorded = _read_existing(path) if dist.is_main_process() else (None, None)
    if normalize_from_imn:
        stats = (list(IMAGENET_MEAN), list(IMAGENET_STD))
    else:
        reuse = _reusable(path, existing, recorded, roots, resumed) if dist.is_main_process() else None
        stats, problem = dist.broadcast_object(reuse)
        if problem:
            raise UsageError(problem)
        if stats is None:
            stats = compute_mean_std(image_paths, input_size, batch_size, num_workers, device)
    if dist.is_main_process():
        if existing != stats:
            if existing is not None:
                logger.warning("replacing the statistics in %s (%s) with %s", path, existing, stats)
            write_mean_std(path, *stats, data_paths=roots if roots and not normalize_from_imn else None)
        logger.info("normalisation mean %s std %s (%s)", stats[0], stats[1], path)
    return stats


def _reusable(path: Path, stats: tuple[list[float], list[float]] | None, recorded: list[str] | None,
              roots: list[str], resumed: bool) -> tuple[tuple[list[float], list[float]] | None, str | None]:
    """``(statistics to reuse or None, refusal message or None)`` for the statistics ``stats`` read from
    ``path``, computed from the data roots ``recorded``."""
    if recorded is None or not roots or sorted(recorded) == sorted(roots):
        return stats, None
    message = (f"{path} holds the statistics of the data {', '.join(recorded)}, not of this run's data "
               f"{', '.join(roots)}")
    if resumed:
        logger.warning("%s; the resumed run keeps them (its checkpoint was trained with them)", message)
        return stats, None
    return None, f"{message}; give a new --output_dir (or delete the file to compute the statistics of this data)"


def _read_existing(path: Path) -> tuple[tuple[list[float], list[float]] | None, list[str] | None]:
    """The finite statistics of an existing file and the data roots it records (``(None, None)`` when
    the file is absent, unusable or not finite; roots None when it records none)."""
    if not path.is_file():
        return None, None
    try:
        stats, obj = _read_record(path)
    except StatsFileError as e:
        logger.warning("ignoring %s", e)
        return None, None
    if not all(math.isfinite(v) for v in stats[0] + stats[1]):
        return None, None
    paths = obj.get("data_paths") if isinstance(obj, dict) else None
    return stats, [str(p) for p in paths] if isinstance(paths, list) else None
