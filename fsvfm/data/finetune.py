"""Data sets, samplers and transforms for fine-tuning and testing.

Class indices come from the task's ``ClassVocabulary`` (DfD / DiFF: **fake = 0, real = 1**, as the
released models; scores are P(class ``positive``)). Folder labels are decided by meaning, not by
alphabetical order: a class folder is labelled by the vocabulary word its name contains; none or
several is an error naming it.

Unreadable images (empty, truncated, not an image, a decompression bomb) never stop a run: each is
named once in the log and flagged in a shared-memory tensor (so DataLoader workers' findings reach
the main process); training sets then return the next readable sample, evaluation sets return
``None`` as the image and ``collate_readable`` drops it. ``util.images.unreadable_files`` lists them
(all ranks).
Video names (the grouping key of video-level metrics) include the frame's folder, so frames named
alike in ``real/`` and ``fake/`` never form one video.
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
from torch.utils.data import ConcatDataset, Dataset, Sampler, default_collate
from torchvision import datasets, transforms

from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.images import SkipsUnreadable, read_rgb
from fsvfm.util.naming import DFD_VOCABULARY, ClassVocabulary, frame_video_key

logger = logging.getLogger(__name__)


ON_UNREADABLE = ("next", "skip")


class SplitFileError(DataError):
    """Bad split-file lines (the message names the file and every bad line number)."""


class ReadsImages(SkipsUnreadable):
    """``SkipsUnreadable`` for data sets of ``self.samples = [(path, label), ...]`` and
    ``self.transform``: items are ``(image, label)``; an unreadable image is replaced by the next
    readable sample (``on_unreadable='next'``, training) or returned as ``None`` (``'skip'``,
    evaluation)."""

    samples: list[tuple[str, int]]
    transform: Callable | None

    def _track_unreadable(self, on_unreadable: str = "next") -> None:
        if on_unreadable not in ON_UNREADABLE:
            raise ValueError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")
        self.on_unreadable = on_unreadable
        super()._track_unreadable()

    def load_sample(self, index: int) -> Image.Image:
        return read_rgb(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        i, image = self.load_readable(index, replace=self.on_unreadable == "next")
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return image, self.samples[i][1]


class LabelledImageFolder(ReadsImages, datasets.ImageFolder):
    """``ImageFolder`` whose class index comes from the folder's meaning under ``vocabulary``.

    Several folders may share a label (e.g. ``fake_DeepFakes`` and ``fake_FaceSwap``). Unreadable
    images: see ``ReadsImages`` (``on_unreadable``: ``'next'`` or ``'skip'``).
    """

    def __init__(self, root: str, transform: Callable | None = None,
                 vocabulary: ClassVocabulary = DFD_VOCABULARY, on_unreadable: str = "next") -> None:
        self.vocabulary = vocabulary  # find_classes runs inside ImageFolder.__init__
        super().__init__(root, transform=transform)
        self._track_unreadable(on_unreadable)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"no class folders (e.g. {', '.join(self.vocabulary.names)}) in {directory}")
        class_to_idx = {n: self.vocabulary.label_of(n, directory) for n in names}
        return sorted(names, key=lambda n: (class_to_idx[n], n)), class_to_idx

    @property
    def video_names(self) -> list[str]:
        """``{folder relative to root}/{video}`` per sample, e.g. ``real/id0_0001``."""
        return [frame_video_key(p, self.root) for p, _ in self.samples]


class TestImageFolder(LabelledImageFolder):
    """Items are ``(image, label, video_name)``; an unreadable image is ``None``."""

    def __init__(self, root: str, transform: Callable | None = None,
                 vocabulary: ClassVocabulary = DFD_VOCABULARY, on_unreadable: str = "skip") -> None:
        super().__init__(root, transform, vocabulary, on_unreadable)

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        image, label = super().__getitem__(index)
        return image, label, frame_video_key(self.samples[index][0], self.root)


def _split_line(line: str, delimiter: str, num_classes: int | None) -> tuple[str, int]:
    """``(image, label)`` of one split-file line; ``ValueError`` saying what is wrong."""
    fields = line.split(delimiter)
    if len(fields) != 2:
        raise ValueError(f"expected '<image path>{delimiter}<integer label>' (delimiter {delimiter!r}), "
                         f"got {len(fields)} field(s) in {line[:80]!r}")
    try:
        label = int(fields[1])
    except ValueError:
        raise ValueError(f"label {fields[1].strip()[:20]!r} is not an integer") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"label {label} is outside 0..{num_classes - 1 if num_classes else 'N'}")
    return fields[0].strip(), label


def _bad_lines_message(path: Path, what: str, bad: Sequence[tuple[int, str]], hint: str = "") -> str:
    """``{path}: 3 {what} (lines 2, 7, 9): line 2: ...; line 7: ...`` (details of the first 5)."""
    details = "; ".join(f"line {n}: {msg}" for n, msg in bad[:5]) + ("; ..." if len(bad) > 5 else "")
    return f"{path}: {len(bad)} {what} (lines {', '.join(str(n) for n, _ in bad)}): {details}{hint}"


CLASSES_LINE = "# classes:"


def split_file_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names of a split file's first line ``# classes: real deepfake diffusion spoof`` (labels
    0, 1, ... in that order; commas or spaces), None when it has no such line."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = next((line.strip() for line in fh if line.strip()), "")
    except OSError:
        return None
    if not first.lower().startswith(CLASSES_LINE):
        return None
    return [n for n in first[len(CLASSES_LINE):].replace(",", " ").split() if n] or None


def read_split_file(path: str | os.PathLike, delimiter: str = " ", root: str | os.PathLike | None = None,
                    num_classes: int | None = None) -> list[tuple[str, int]]:
    """Parse ``<image path><delimiter><integer label>`` lines (blank lines and ``# `` comment lines,
    e.g. the ``# classes:`` line, skipped).

    With ``root`` the path's leading ``/`` or ``\\`` is stripped and it is joined to ``root``.
    Labels must be in ``0..num_classes-1`` (``>= 0`` when ``num_classes`` is None). Every bad line is
    reported at once: ``SplitFileError`` naming the file and each malformed or out-of-range line,
    then ``FileNotFoundError`` listing the lines whose image does not exist (before any training).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    samples: list[tuple[str, int]] = []
    lines: list[int] = []
    bad: list[tuple[int, str]] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.strip() == "#" or raw.lstrip().startswith("# "):  # comments: "# ..."
            continue
        try:
            image, label = _split_line(raw.strip(), delimiter, num_classes)
        except ValueError as e:
            bad.append((lineno, str(e)))
            continue
        samples.append((os.path.join(root, image.lstrip("/\\")) if root is not None else image, label))
        lines.append(lineno)
    if bad:
        raise SplitFileError(_bad_lines_message(path, "bad line(s)", bad))
    if not samples:
        raise SplitFileError(f"{path}: no samples")
    missing = [(n, f"{p} does not exist") for n, (p, _) in zip(lines, samples) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(_bad_lines_message(path, f"of {len(samples)} listed images missing", missing,
                                                   "; check --dataset_abs_path"))
    return samples


class SplitFileDataset(ReadsImages, Dataset):
    """Samples listed in a split file (the original's ``CustomDataset``); labels are used as written
    (checked against ``num_classes`` when given). Unreadable images: see ``ReadsImages``."""

    def __init__(self, split_file: str | os.PathLike, transform: Callable | None = None,
                 delimiter: str = " ", root: str | os.PathLike | None = None, num_classes: int | None = None,
                 on_unreadable: str = "next") -> None:
        self.samples = read_split_file(split_file, delimiter, root, num_classes)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.root = str(split_file)
        self._track_unreadable(on_unreadable)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def video_names(self) -> list[str]:
        """``{image folder}/{video}`` per sample."""
        return [frame_video_key(p) for p, _ in self.samples]


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


def collate_readable(batch: list[tuple]) -> Any:
    """``default_collate`` of the items whose image (item[0]) could be read; None when none could."""
    kept = [item for item in batch if item[0] is not None]
    return default_collate(kept) if kept else None


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
        what = f"both {needed}" if len(vocabulary.names) == 2 else f"at least two of {needed}"
        raise DataError(f"the {name} set holds only class(es) {present} ({len(dataset)} images): "  # type: ignore[arg-type]
                         f"it needs {what} images")
    if present[-1] >= nb_classes:
        raise DataError(f"the {name} set has label {present[-1]} but --nb_classes is {nb_classes}")


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
def split_folders(args: argparse.Namespace, split: str) -> list[str]:
    """The folders of class folders of ``split`` (``train``/``val``): ``--train``/``--val DIR`` (the plain
    layout, any folder names), else ``DIR/{split}`` of each ``--finetune_data_path``; [] when neither."""
    plain = getattr(args, split, None)
    if plain and args.data_path:
        raise UsageError(f"--{split} {plain} and --finetune_data_path both name {split} data: give one of them")
    return [plain] if plain else [str(Path(d) / split) for d in args.data_path]


def check_folder_flags(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(train folders, val folders)``; a ``UsageError`` for half a pair or folders mixed with split files
    (cheap: the fine-tuning program calls it before its start-up log)."""
    if not hasattr(args, "data_path"):  # a task without folder flags
        return [], []
    train_dirs, val_dirs = split_folders(args, "train"), split_folders(args, "val")
    if bool(train_dirs) != bool(val_dirs):
        given, lacking = ("--train", "--val") if train_dirs else ("--val", "--train")
        raise UsageError(f"{given} needs {lacking} too: give both folders (each holds class folders, e.g. real/, fake/)")
    if train_dirs and (getattr(args, "train_split", None) or getattr(args, "val_split", None)):
        raise UsageError("give folders (--train/--val or --finetune_data_path) or split files (--train_split/"
                         "--val_split), not both")
    return train_dirs, val_dirs


def _image_folders(folders: Sequence[str], transform: Callable, vocabulary: ClassVocabulary,
                   on_unreadable: str) -> Dataset:
    missing = [d for d in folders if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"data folder(s) not found: {', '.join(missing)}")
    parts = [LabelledImageFolder(d, transform, vocabulary, on_unreadable) for d in folders]
    for d in parts:
        logger.info("%s: %d images, classes %s", d.root, len(d), d.class_to_idx)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_finetune_datasets(args: argparse.Namespace, train_transform: Callable, val_transform: Callable,
                            vocabulary: ClassVocabulary = DFD_VOCABULARY) -> tuple[Dataset, Dataset]:
    """Training and validation sets from ``--train DIR --val DIR`` (folders of class folders), from
    ``--finetune_data_path`` (repeatable; ``DIR/train`` and ``DIR/val``) or from ``--train_split``/``--val_split``
    (then ``args.nb_classes`` = max label + 1, and validation labels must be below it). Unreadable training
    images are replaced by the next readable one, unreadable validation images are left out (both counted)."""
    train_dirs, val_dirs = check_folder_flags(args)
    if train_dirs:
        return (_image_folders(train_dirs, train_transform, vocabulary, "next"),
                _image_folders(val_dirs, val_transform, vocabulary, "skip"))
    if args.train_split and args.val_split:
        kw = dict(delimiter=args.delimiter_in_split, root=args.dataset_abs_path)
        train = SplitFileDataset(args.train_split, train_transform, **kw)
        nb_classes = max(train.targets) + 1
        if nb_classes != args.nb_classes:
            logger.info("--nb_classes set to %d from the labels of %s", nb_classes, args.train_split)
            args.nb_classes = nb_classes
        val = SplitFileDataset(args.val_split, val_transform, num_classes=nb_classes, on_unreadable="skip", **kw)
        return train, val
    raise UsageError("no training data: give --train DIR --val DIR (folders of class folders), "
                     "--finetune_data_path DIR (with DIR/train and DIR/val) or both --train_split and --val_split")

