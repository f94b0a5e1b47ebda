"""Pre-training data: face images with parsing maps, and their transforms.

A data root holds ``images/<stem>.png`` and ``parsing_maps/<stem>.npy`` (int8 or uint8, shape
(1, H, W) or (H, W)). Maps stay uint8 end to end and are resized nearest-neighbour; with
``--apply_simple_augment`` the crop and flip are applied to the image and its map together (the
original transformed only the image, DEVIATIONS.md P9). The data-set mean/std is computed in
``fsvfm.util.norm_stats``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.images import SkipsUnreadable, UnreadableImageError, read_rgb
from fsvfm.util.naming import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

FACE_PARSE = "datasets/pretrain/preprocess/face_parse.py"


class SampleError(ValueError):
    """A parsing map that cannot be used (unreadable, mis-shaped or not its image's size)."""


def list_samples(root: str | os.PathLike) -> tuple[list[tuple[Path, Path]], int]:
    """Sorted ``(image, map)`` pairs of a data root, and the number of images without a map.
    A missing root is a ``FileNotFoundError``, a root without ``images/`` or ``parsing_maps/`` a
    ``DataError`` pointing to the face-parsing script that makes them."""
    root = Path(root)
    image_dir, map_dir = root / "images", root / "parsing_maps"
    if not root.is_dir():
        raise FileNotFoundError(f"--pretrain_data_path {root} does not exist")
    for folder in (image_dir, map_dir):
        if not folder.is_dir():
            raise DataError(f"pre-training data root {root} has no {folder.name}/ folder; make images/ and "
                            f"parsing_maps/ with: python {FACE_PARSE} --dataset custom --src PHOTOS --dst {root}")
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
        raise DataError(f"pre-training data root {root} holds no image with a parsing map (run {FACE_PARSE})")
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


class PretrainTransform:
    """``(uint8 image [3,h,w], uint8 map [1,h,w]) -> (image [3,S,S], uint8 map [1,S,S])``.

    The image stays uint8 so that workers, the collate and the host-to-device copy move 4x fewer
    bytes; the engine normalises it on the device (``fsvfm.data.device.DeviceNormalize``).
    Given ``mean``/``std`` it returns the normalised float32 image instead (the same arithmetic).
    Default: bicubic (antialiased) resize to S x S when needed. ``simple_augment``:
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


class FaceParsingDataset(SkipsUnreadable, Dataset):
    """Images with LaPa parsing maps under one data root.

    Items: ``{'image': uint8 [3,S,S] (float when the transform normalises), 'parsing_map': uint8
    [1,S,S]}``. A sample whose image or map cannot be read (``util.images.read_rgb``: also a small file
    that decodes to a huge image), or whose map size differs from its image, is skipped: the next sample
    is returned instead (``util.images.SkipsUnreadable``: flagged for ``unreadable_files``, named once
    in the log).
    """

    unreadable_errors = (UnreadableImageError, SampleError)
    skip_message = "skipping sample: %s"

    def __init__(self, root: str | os.PathLike, transform: PretrainTransform | None = None) -> None:
        self.root = Path(root)
        self.samples, self.num_missing_maps = list_samples(self.root)
        self.transform = transform or PretrainTransform()
        self._track_unreadable()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_paths(self) -> list[Path]:
        return [img for img, _ in self.samples]

    def load_sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image [3,H,W] and parsing map [1,H,W] of sample ``index``."""
        image_path, map_path = self.samples[index]
        image = TF.pil_to_tensor(read_rgb(image_path))
        parsing_map = load_parsing_map(map_path)
        if parsing_map.shape[-2:] != image.shape[-2:]:
            raise SampleError(f"parsing map {map_path} is {tuple(parsing_map.shape[-2:])} but image "
                              f"{image_path} is {tuple(image.shape[-2:])}")
        return image, parsing_map

    def __getitem__(self, index: int) -> dict:
        _, (image, parsing_map) = self.load_readable(index)
        img, parsing_map = self.transform(image, parsing_map)
        return {"image": img, "parsing_map": parsing_map}


def require_roots(roots: Sequence[str | os.PathLike] | None) -> None:
    """Refuse a run without ``--pretrain_data_path`` (before anything is written)."""
    if not roots:
        raise UsageError("no pre-training data: give at least one --pretrain_data_path")


def build_pretrain_dataset(roots: Sequence[str | os.PathLike], transform: PretrainTransform) -> Dataset:
    """One ``FaceParsingDataset`` per root, concatenated (repeated ``--pretrain_data_path``)."""
    require_roots(roots)
    datasets = [FaceParsingDataset(root, transform) for root in roots]
    for ds in datasets:
        logger.info("data root %s: %d samples (%d images without a map skipped)", ds.root, len(ds),
                    ds.num_missing_maps)
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def dataset_image_paths(dataset: Dataset) -> list[Path]:
    """Image paths of a ``FaceParsingDataset`` or a ``ConcatDataset`` of them, in index order."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    return [p for ds in parts for p in ds.image_paths]
