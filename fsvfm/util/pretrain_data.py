"""Pre-training data (spec 3.2, 3.11): face images with parsing maps, transforms, data-set mean/std.

A data root holds ``images/<stem>.png`` and ``parsing_maps/<stem>.npy`` (int8 or uint8, shape
(1, H, W) or (H, W)). Maps stay uint8 end to end and are resized nearest-neighbour; with
``--apply_simple_augment`` the crop and flip are applied to the image and its map together (the
original transformed only the image, spec 9.1 P9).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF
from tqdm import tqdm

from fsvfm.util import dist
from fsvfm.util.naming import IMAGE_EXTENSIONS
from fsvfm.util.norm_stats import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STATS_FILENAME,
    StatsFileError,
    read_mean_std,
    write_mean_std,
)

logger = logging.getLogger(__name__)

MAX_LOAD_ATTEMPTS = 16


class SampleError(ValueError):
    """An image or parsing map that cannot be used (unreadable or mis-shaped)."""


def list_samples(root: str | os.PathLike) -> tuple[list[tuple[Path, Path]], int]:
    """Sorted ``(image, map)`` pairs of a data root, and the number of images without a map."""
    root = Path(root)
    image_dir, map_dir = root / "images", root / "parsing_maps"
    if not image_dir.is_dir() or not map_dir.is_dir():
        raise FileNotFoundError(f"pre-training data root {root} needs the folders images/ and parsing_maps/")
    pairs, missing = [], 0
    for name in sorted(os.listdir(image_dir)):
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        map_path = map_dir / f"{Path(name).stem}.npy"
        if map_path.is_file():
            pairs.append((image_dir / name, map_path))
        else:
            missing += 1
            logger.warning("skipping %s: parsing map %s is missing", image_dir / name, map_path)
    if not pairs:
        raise ValueError(f"pre-training data root {root} holds no image with a parsing map")
    return pairs, missing


def load_parsing_map(path: str | os.PathLike) -> torch.Tensor:
    """A parsing map as uint8 [1, H, W] (accepts int8/uint8/int, shape (1, H, W) or (H, W))."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise SampleError(f"unreadable parsing map {path}: {e}") from e
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise SampleError(f"parsing map {path} has shape {arr.shape} / dtype {arr.dtype}, expected (1,H,W) integers")
    return torch.from_numpy(arr.astype(np.uint8))[None]


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """An image file as RGB uint8 [3, H, W] (Pillow; no mode conversion copy for RGB files)."""
    try:
        with Image.open(path) as im:
            im.load()
            pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError(f"unreadable image {path}: {e}") from e
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class PretrainTransform:
    """``(uint8 image [3,h,w], uint8 map [1,h,w]) -> (image [3,S,S], uint8 map [1,S,S])``.

    The image stays uint8 so that workers, the collate and the host-to-device copy move 4x fewer
    bytes; the engine normalises it on the device (``fsvfm.util.device_data.DeviceNormalize``).
    Given ``mean``/``std`` it returns the normalised float32 image instead (the same arithmetic).
    Default (spec 3.2): bicubic (antialiased) resize to S x S when needed. ``simple_augment``:
    resize, RandomResizedCrop(S, scale 0.2-1, bicubic) and horizontal flip applied jointly to image
    and map (map nearest-neighbour).
    """

    def __init__(self, input_size: int = 224, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, simple_augment: bool = False) -> None:
        self.size = input_size
        self.mean, self.std = (list(mean), list(std)) if mean is not None and std is not None else (None, None)
        self.augment = v2.Compose([
            v2.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
            v2.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
        ]) if simple_augment else None

    def __call__(self, img: torch.Tensor, parsing_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = [self.size, self.size]
        if self.augment is not None:
            img, parsing_map = self.augment(tv_tensors.Image(img), tv_tensors.Mask(parsing_map))
            img, parsing_map = img.as_subclass(torch.Tensor), parsing_map.as_subclass(torch.Tensor)
        else:
            if list(img.shape[-2:]) != size:
                img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
            if list(parsing_map.shape[-2:]) != size:
                parsing_map = TF.resize(parsing_map, size, interpolation=InterpolationMode.NEAREST)
        if self.mean is not None:
            return TF.normalize(img.float().div_(255), self.mean, self.std), parsing_map
        return img, parsing_map


class FaceParsingDataset(Dataset):
    """Images with LaPa parsing maps under one data root (spec 3.2).

    Items: ``{'image': uint8 [3,S,S] (float when the transform normalises), 'parsing_map': uint8
    [1,S,S], 'num_skipped': int}``. An image or map that cannot be read, or a map whose size
    differs from its image, is skipped with a warning naming the file: the next sample is returned
    instead and ``num_skipped`` counts the files passed over, so the epoch log can report them.
    """

    def __init__(self, root: str | os.PathLike, transform: PretrainTransform | None = None) -> None:
        self.root = Path(root)
        self.samples, self.num_missing_maps = list_samples(self.root)
        self.transform = transform or PretrainTransform()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_paths(self) -> list[Path]:
        return [img for img, _ in self.samples]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image [3,H,W] and parsing map [1,H,W] of sample ``index``."""
        image_path, map_path = self.samples[index]
        image, parsing_map = read_rgb(image_path), load_parsing_map(map_path)
        if parsing_map.shape[-2:] != image.shape[-2:]:
            raise SampleError(f"parsing map {map_path} is {tuple(parsing_map.shape[-2:])} but image "
                              f"{image_path} is {tuple(image.shape[-2:])}")
        return image, parsing_map

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_LOAD_ATTEMPTS):
            try:
                image, parsing_map = self.load((index + attempt) % len(self))
            except SampleError as e:
                logger.warning("skipping sample: %s", e)
                continue
            img, parsing_map = self.transform(image, parsing_map)
            return {"image": img, "parsing_map": parsing_map, "num_skipped": attempt}
        raise RuntimeError(f"{MAX_LOAD_ATTEMPTS} unreadable samples in a row from index {index} in {self.root}")


def build_pretrain_dataset(roots: Sequence[str | os.PathLike], transform: PretrainTransform) -> Dataset:
    """One ``FaceParsingDataset`` per root, concatenated (repeated ``--pretrain_data_path``)."""
    if not roots:
        raise ValueError("no pre-training data: give at least one --pretrain_data_path")
    datasets = [FaceParsingDataset(root, transform) for root in roots]
    for ds in datasets:
        logger.info("data root %s: %d samples (%d images without a map skipped)", ds.root, len(ds),
                    ds.num_missing_maps)
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def dataset_image_paths(dataset: Dataset) -> list[Path]:
    """Image paths of a ``FaceParsingDataset`` or a ``ConcatDataset`` of them, in index order."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    return [p for ds in parts for p in ds.image_paths]


# ------------------------------------------------------------------------------- mean / std
class _ImageMoments(Dataset):
    """Per image: float64 [7] = per-channel sums (3), sums of squares (3), pixel count."""

    def __init__(self, paths: Sequence[Path], input_size: int) -> None:
        self.paths, self.size = list(paths), input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            img = read_rgb(self.paths[index]).float().div_(255)
        except SampleError as e:
            logger.warning("mean/std: skipping %s", e)
            return torch.zeros(7, dtype=torch.float64)
        if list(img.shape[-2:]) != [self.size, self.size]:
            img = TF.resize(img, [self.size, self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = img.double()
        count = torch.tensor([img[0].numel()], dtype=torch.float64)
        return torch.cat([img.sum(dim=(1, 2)), (img * img).sum(dim=(1, 2)), count])


def compute_mean_std(image_paths: Sequence[Path], input_size: int, batch_size: int = 64, num_workers: int = 0,
                     device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of the images in [0, 1] after resizing to ``input_size``.

    Exact pixel moments over every image (the original averaged per-batch moments and dropped the
    last partial batch). Under DDP each rank reads an interleaved shard and the sums are
    all-reduced, so every image is read once and all ranks get the same result.
    """
    shard = list(image_paths)[dist.get_rank()::dist.get_world_size()]
    loader = DataLoader(_ImageMoments(shard, input_size), batch_size=batch_size, num_workers=num_workers)
    acc = torch.zeros(7, dtype=torch.float64)
    for batch in tqdm(loader, desc="data-set mean/std", disable=not dist.is_main_process()):
        acc += batch.sum(dim=0)
    acc = dist.all_reduce_sum(acc.to(device)).cpu()
    if acc[6] == 0:
        raise ValueError("cannot compute the data-set mean/std: no readable image")
    mean = acc[:3] / acc[6]
    std = (acc[3:6] / acc[6] - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def resolve_pretrain_mean_std(output_dir: str | os.PathLike, image_paths: Sequence[Path], input_size: int,
                              normalize_from_imn: bool, batch_size: int = 64, num_workers: int = 0,
                              device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """Mean/std for the run, recorded as the first (only) line of ``output_dir/pretrain_ds_mean_std.txt``.

    ``normalize_from_imn``: ImageNet statistics, also written to the file so fine-tuning never falls
    back to other statistics silently (P10). Otherwise an existing file (a resumed run) is reused,
    else the statistics are computed once over the data set. Call on every rank.
    """
    path = Path(output_dir) / STATS_FILENAME
    if normalize_from_imn:
        stats = (list(IMAGENET_MEAN), list(IMAGENET_STD))
    else:
        stats = _read_existing(path) if dist.is_main_process() else None
        stats = dist.broadcast_object(stats)
        if stats is None:
            stats = compute_mean_std(image_paths, input_size, batch_size, num_workers, device)
    if dist.is_main_process():
        existing = _read_existing(path)
        if existing != stats:
            if existing is not None:
                logger.warning("replacing the statistics in %s (%s) with %s", path, existing, stats)
            write_mean_std(path, *stats)
        logger.info("normalisation mean %s std %s (%s)", stats[0], stats[1], path)
    return stats


def _read_existing(path: Path) -> tuple[list[float], list[float]] | None:
    if not path.is_file():
        return None
    try:
        stats = read_mean_std(path)
    except StatsFileError as e:
        logger.warning("ignoring %s", e)
        return None
    if not all(math.isfinite(v) for v in stats[0] + stats[1]):
        return None
    return stats
