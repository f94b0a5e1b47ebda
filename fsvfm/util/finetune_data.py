"""Data sets, samplers and transforms for fine-tuning and testing (spec 4.3-4.5, 5.2).

Class indices come from the task's ``ClassVocabulary`` (DfD / DiFF: **fake = 0, real = 1**, as the
released models; scores are P(class ``positive``)). Folder labels are decided by meaning, not by
alphabetical order: a class folder is labelled by the vocabulary word its name contains; none or
several is an error naming it.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import ConcatDataset, Dataset, Sampler
from torchvision import datasets, transforms

from fsvfm.util.naming import DFD_VOCABULARY, ClassVocabulary, video_name_from_path

logger = logging.getLogger(__name__)


class SplitFileError(ValueError):
    """A split file line is malformed (message names file and line number)."""


class LabelledImageFolder(datasets.ImageFolder):
    """``ImageFolder`` whose class index comes from the folder's meaning under ``vocabulary``.

    Several folders may share a label (e.g. ``fake_DeepFakes`` and ``fake_FaceSwap``).
    """

    def __init__(self, root: str, transform: Callable | None = None,
                 vocabulary: ClassVocabulary = DFD_VOCABULARY) -> None:
        self.vocabulary = vocabulary  # find_classes runs inside ImageFolder.__init__
        super().__init__(root, transform=transform)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"no class folders (e.g. {', '.join(self.vocabulary.names)}) in {directory}")
        class_to_idx = {n: self.vocabulary.label_of(n, directory) for n in names}
        return sorted(names, key=lambda n: (class_to_idx[n], n)), class_to_idx

    @property
    def video_names(self) -> list[str]:
        return [video_name_from_path(p) for p, _ in self.samples]


class TestImageFolder(LabelledImageFolder):
    """Items are ``(image, label, video_name)`` (spec 5.2)."""

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        image, label = super().__getitem__(index)
        return image, label, video_name_from_path(self.samples[index][0])


def read_split_file(path: str | os.PathLike, delimiter: str = " ",
                    root: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Parse ``<image path><delimiter><integer label>`` lines (blank lines skipped).

    With ``root`` the path's leading ``/`` or ``\\`` is stripped and it is joined to ``root``.
    Raises ``SplitFileError`` naming the file and line of a malformed line, and
    ``FileNotFoundError`` listing images that do not exist (checked before any training).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    samples: list[tuple[str, int]] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(delimiter)
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} field(s)")
            label = int(fields[1])
        except ValueError as e:
            raise SplitFileError(f"{path}:{lineno}: expected '<image path>{delimiter}<integer label>' "
                                 f"(delimiter {delimiter!r}), got {line!r} ({e})") from None
        image = fields[0].strip()
        if root is not None:
            image = os.path.join(root, image.lstrip("/\\"))
        samples.append((image, label))
    if not samples:
        raise SplitFileError(f"{path}: no samples")
    missing = [(i, p) for i, (p, _) in enumerate(samples) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(p for _, p in missing[:3])
        raise FileNotFoundError(f"{path}: {len(missing)} of {len(samples)} listed images do not exist "
                                f"(e.g. {shown}); check --dataset_abs_path")
    return samples


class SplitFileDataset(Dataset):
    """Samples listed in a split file (spec 4.3 ``CustomDataset``); labels are used as written."""

    def __init__(self, split_file: str | os.PathLike, transform: Callable | None = None,
                 delimiter: str = " ", root: str | os.PathLike | None = None) -> None:
        self.samples = read_split_file(split_file, delimiter, root)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.root = str(split_file)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), label

    @property
    def video_names(self) -> list[str]:
        return [video_name_from_path(p) for p, _ in self.samples]


class IndexedDataset(Dataset):
    """Wrap a data set so items are ``(image, label, index)``: predictions can be gathered across
    ranks and put back in data-set order without counting any sample twice."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        item = self.dataset[index]
        return item[0], item[1], index


def dataset_video_names(dataset: Dataset) -> list[str]:
    """Per-sample video names (file name before ``_frame_``); sample ids when unknown."""
    names = getattr(dataset, "video_names", None)
    if names is None and isinstance(dataset, ConcatDataset):
        names = [n for d in dataset.datasets for n in dataset_video_names(d)]
    return list(names) if names is not None else [str(i) for i in range(len(dataset))]  # type: ignore


def dataset_targets(dataset: Dataset) -> list[int]:
    """Per-sample integer labels of an ImageFolder, split-file data set or a concatenation of them."""
    if isinstance(dataset, ConcatDataset):
        return [t for d in dataset.datasets for t in dataset_targets(d)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"cannot read the labels of a {type(dataset).__name__}")
    return [int(t) for t in targets]


def check_classes(dataset: Dataset, name: str, nb_classes: int,
                  vocabulary: ClassVocabulary = DFD_VOCABULARY) -> None:
    """Fail before training when a set lacks a class (AUC/EER would be undefined) or has too many."""
    present = sorted(set(dataset_targets(dataset)))
    if len(present) < 2:
        needed = " and ".join(f"{n} ({i})" for i, n in enumerate(vocabulary.names))
        raise ValueError(f"the {name} set holds only class(es) {present} ({len(dataset)} images): "  # type: ignore[arg-type]
                         f"it needs both {needed} images")
    if present[-1] >= nb_classes:
        raise ValueError(f"the {name} set has label {present[-1]} but --nb_classes is {nb_classes}")


class ShardSampler(Sampler[int]):
    """Unpadded evaluation sharding: rank r gets indices r, r + W, ... (no duplicates, unlike
    ``DistributedSampler``, so gathered predictions cover the set exactly once)."""

    def __init__(self, dataset_len: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, dataset_len, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


# ---------------------------------------------------------------------------------- transforms
def build_transform(is_train: bool, args: argparse.Namespace, mean: Sequence[float],
                    std: Sequence[float]) -> Callable:
    """Spec 4.5. With ``--apply_simple_augment``: timm RandAugment training pipeline (bicubic, the
    original's intent; ``--train_interpolation bilinear`` reproduces its accident) and
    resize-256 / centre-crop-224 evaluation. Without it: a plain ``Resize((s, s), bicubic)``."""
    size = args.input_size
    mean, std = tuple(mean), tuple(std)
    if not args.apply_simple_augment:
        return transforms.Compose([
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(), transforms.Normalize(mean, std)])
    if is_train:
        return _posterize_zero_bits_compat(create_transform(
            input_size=size, is_training=True, color_jitter=args.color_jitter, auto_augment=args.aa,
            interpolation=getattr(args, "train_interpolation", "bicubic"), re_prob=args.reprob,
            re_mode=args.remode, re_count=args.recount, mean=mean, std=std))
    crop_pct = 224 / 256 if size <= 224 else 1.0
    return create_transform(input_size=size, is_training=False, interpolation="bicubic",
                            crop_pct=crop_pct, mean=mean, std=std)


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keeping 0 bits gives a black image, as with the Pillow 9 of the original environment
    (Pillow >= 10 raises for 0 bits, which 'rand-m9-mstd0.5-inc1' reaches when its noisy magnitude hits 10)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_bits_compat(transform: Callable) -> Callable:
    """Route every timm RandAugment/AutoAugment posterize op of ``transform`` through ``_posterize``."""
    for t in getattr(transform, "transforms", ()):
        for op in getattr(t, "ops", ()):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


# ------------------------------------------------------------------------------------ data sets
def _image_folders(dirs: Sequence[str], split: str, transform: Callable, vocabulary: ClassVocabulary) -> Dataset:
    missing = [str(Path(d) / split) for d in dirs if not (Path(d) / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"data folder(s) not found: {', '.join(missing)}")
    parts = [LabelledImageFolder(str(Path(d) / split), transform, vocabulary) for d in dirs]
    for d in parts:
        logger.info("%s: %d images, classes %s", d.root, len(d), d.class_to_idx)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_finetune_datasets(args: argparse.Namespace, train_transform: Callable, val_transform: Callable,
                            vocabulary: ClassVocabulary = DFD_VOCABULARY) -> tuple[Dataset, Dataset]:
    """Training and validation sets from ``--finetune_data_path`` (repeatable; ``DIR/train`` and
    ``DIR/val``) or from ``--train_split``/``--val_split`` (then ``args.nb_classes`` = max label + 1)."""
    if args.data_path:
        return (_image_folders(args.data_path, "train", train_transform, vocabulary),
                _image_folders(args.data_path, "val", val_transform, vocabulary))
    if args.train_split and args.val_split:
        kw = dict(delimiter=args.delimiter_in_split, root=args.dataset_abs_path)
        train = SplitFileDataset(args.train_split, train_transform, **kw)
        val = SplitFileDataset(args.val_split, val_transform, **kw)
        nb_classes = max(train.targets) + 1
        if nb_classes != args.nb_classes:
            logger.info("--nb_classes set to %d from the labels of %s", nb_classes, args.train_split)
            args.nb_classes = nb_classes
        return train, val
    raise ValueError("no training data: give --finetune_data_path DIR (with DIR/train and DIR/val) "
                     "or both --train_split and --val_split")

