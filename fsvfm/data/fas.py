"""Cross-domain FAS data: the protocol table, list files, FASDataset and balanced source batches.

Tree under ``--fas_data_root``: ``MCIO/{frame,txt}/`` (casia, replay, oulu, msu, celeb) and
``WCS/{frame,txt}/`` (cefa, surf, wmca, and ``custom``: your own data, lists from
``python -m fsvfm.preprocess.fas_lists``, trained and tested with ``--config custom``). A list file ``{domain}_{real|fake}_{train|test|shot}.txt``
holds one frame path per line, relative to the group's ``frame/`` folder. Labels: fake = 0, real = 1.
A test video is one list line ``..._frame0.png`` plus its ``..._frame1.png``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fsvfm.hub import pretrained_stats_candidates
from fsvfm.util import images
from fsvfm.util.checkpoint import resolve_checkpoint_path
from fsvfm.util.errors import DataError
from fsvfm.util.images import UnreadableImageError
from fsvfm.util.naming import fas_video_key
from fsvfm.util.norm_stats import IMAGENET_MEAN, IMAGENET_STD, STATS_FILENAME, resolve_mean_std, warn_if_stale

logger = logging.getLogger(__name__)

FAKE, REAL = 0, 1
CLASSES = (("fake", FAKE), ("real", REAL))
MCIO_DOMAINS = ("casia", "replay", "oulu", "msu", "celeb")
WCS_DOMAINS = ("cefa", "surf", "wmca")
SHOTS, SHOT_REPEATS = 5, 4
CUSTOM_DOMAIN = "custom"   # your own data: one domain, its train lists trained on, its test lists tested


class FASDataError(DataError):
    """A FAS list file or frame is missing or malformed (the message names the file and line); a
    ``DataError`` (so a ``ValueError``): the entry points print it as one line."""


@dataclass(frozen=True)
class Protocol:
    """One ``--config``: training source domains (src1..src4 of the original) and the target domain."""
    config: str
    sources: tuple[str, str, str, str]
    target: str

    @property
    def train_sources(self) -> tuple[str, ...]:
        """Domains trained on: src1..src4 for MCIO targets, src1..src3 for WCS targets, each once."""
        return tuple(dict.fromkeys(self.sources[:3] if self.target in WCS_DOMAINS else self.sources))


# Leave-one-out protocols; src5 (= target, 5-shot lists) and weight/gamma/beta are unused.
PROTOCOLS: dict[str, Protocol] = {p.config: p for p in (
    Protocol("C", ("oulu", "replay", "msu", "celeb"), "casia"),
    Protocol("I", ("oulu", "casia", "msu", "celeb"), "replay"),
    Protocol("M", ("oulu", "casia", "replay", "celeb"), "msu"),
    Protocol("O", ("replay", "casia", "msu", "celeb"), "oulu"),
    Protocol("cefa", ("wmca", "surf", "celeb", "celeb"), "cefa"),
    Protocol("surf", ("wmca", "cefa", "celeb", "celeb"), "surf"),
    Protocol("wmca", ("cefa", "surf", "celeb", "celeb"), "wmca"),
    # one-domain protocol of your own data (not cross-domain): train lists -> test lists of the same domain
    Protocol(CUSTOM_DOMAIN, (CUSTOM_DOMAIN,) * 4, CUSTOM_DOMAIN),
)}


def get_protocol(config: str) -> Protocol:
    if config not in PROTOCOLS:
        raise FASDataError(f"unknown FAS config {config!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[config]


def domain_group(domain: str) -> str:
    """``MCIO`` for casia/replay/oulu/msu/celeb, ``WCS`` for any other domain (as the original)."""
    return "MCIO" if domain in MCIO_DOMAINS else "WCS"


def frame_root(root: str | os.PathLike, domain: str) -> Path:
    return Path(root) / domain_group(domain) / "frame"


def list_path(root: str | os.PathLike, domain: str, cls: str, split: str) -> Path:
    """``{root}/{MCIO|WCS}/txt/{domain}_{cls}_{split}.txt``."""
    return Path(root) / domain_group(domain) / "txt" / f"{domain}_{cls}_{split}.txt"


LIST_HINT = ("the benchmark lists come from data.tgz (datasets/README.md); lists of your own frames: "
             "python -m fsvfm.preprocess.fas_lists --src FRAMES --dst ROOT (docs/OWN_DATA.md); or check --fas_data_root")


def numbered_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Stripped non-blank lines with their 1-based numbers; a missing file is a ``FASDataError``."""
    path = Path(path)
    if not path.is_file():
        raise FASDataError(f"{path}: list file not found ({LIST_HINT})")
    try:  # utf-8-sig: a byte-order mark (Windows editors) is not part of the first path
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FASDataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02X} at offset {e.start}); a list "
                           "file holds one frame path per line: save it as UTF-8 or rebuild it") from None
    if "\x00" in text:
        raise FASDataError(f"{path}: a binary file, not a list of frame paths (one per line)")
    return [(i, s) for i, line in enumerate(text.splitlines(), 1) if (s := line.strip())]


def protocol_lists(protocol: Protocol, root: str | os.PathLike) -> list[Path]:
    """Every list file a 0-shot run of ``protocol`` reads: the train lists of each source, the target's test lists."""
    return [*(list_path(root, d, c, "train") for d in protocol.train_sources for c in ("real", "fake")),
            *(list_path(root, protocol.target, c, "test") for c in ("real", "fake"))]


def check_protocol_lists(protocol: Protocol, root: str | os.PathLike) -> None:
    """One ``FASDataError`` naming every missing list of ``protocol`` (not one per run attempt)."""
    missing = [p for p in protocol_lists(protocol, root) if not p.is_file()]
    if len(missing) == 1:
        raise FASDataError(f"{missing[0]}: list file not found ({LIST_HINT})")
    if missing:
        raise FASDataError(f"{len(missing)} list files of --config {protocol.config} not found: "
                           f"{', '.join(map(str, missing))} ({LIST_HINT})")


def read_list_file(path: str | os.PathLike) -> list[str]:
    return [s for _, s in numbered_lines(path)]


def twin_frame(line: str) -> str:
    """The second frame of a test video: the reader adds it for every ``frame0`` line (the originals' rule)."""
    return line.replace("frame0", "frame1")


def _frames(path: Path, base: Path, expand: bool, check: bool) -> list[str]:
    out: dict[str, None] = {}
    for lineno, line in numbered_lines(path):
        names = [line, twin_frame(line)] if expand else [line]
        for name in names:
            frame = str(base / name)
            if check and not os.path.isfile(frame):
                raise FASDataError(f"{path}:{lineno}: frame {frame} not found (run the FAS preprocessing "
                                   "or fix the line)")
            out[frame] = None
    if not out:
        raise FASDataError(f"{path}: lists no frames (empty domain)")
    return list(out)


def train_frames(root: str | os.PathLike, domain: str, cls: str, check: bool = True) -> list[str]:
    """Every frame of ``{domain}_{cls}_train.txt`` (flags 0/1 of the original ``sample_frames``)."""
    return _frames(list_path(root, domain, cls, "train"), frame_root(root, domain), False, check)


def shot_frames(root: str | os.PathLike, domain: str, cls: str, check: bool = True) -> list[str]:
    """The first 5 lines of ``{domain}_{cls}_shot.txt`` repeated 4 times (flags 2/3; few-shot only)."""
    first = _frames(list_path(root, domain, cls, "shot"), frame_root(root, domain), False, check)[:SHOTS]
    return first * SHOT_REPEATS


def test_frames(root: str | os.PathLike, domain: str, check: bool = True) -> tuple[list[str], list[str]]:
    """``(fake, real)`` test frames: every line plus the line with ``frame0`` -> ``frame1``, without
    duplicates, in list order (the original's ``set`` gave an arbitrary order, S9)."""
    base = frame_root(root, domain)
    fake, real = (_frames(list_path(root, domain, c, "test"), base, True, check) for c in ("fake", "real"))
    return fake, real


def sample_frames(flag: int, dataset_name: str, root: str | os.PathLike) -> list[list[str]]:
    """The original's ``[fake_paths, real_paths]`` by flag: 0 fake train, 1 real train, 2 fake shot,
    3 real shot, anything else the test lists."""
    if flag in (0, 1):
        cls = ("fake", "real")[flag]
        paths = train_frames(root, dataset_name, cls)
        return [paths, []] if flag == 0 else [[], paths]
    if flag in (2, 3):
        paths = shot_frames(root, dataset_name, ("fake", "real")[flag - 2])
        return [paths, []] if flag == 2 else [[], paths]
    return list(test_frames(root, dataset_name))


def video_ids(paths: Sequence[str]) -> np.ndarray:
    """Integer video id per path (``np.unique`` inverse of the video keys), int64 [N]."""
    return np.unique([fas_video_key(p) for p in paths], return_inverse=True)[1].astype(np.int64).reshape(-1)


def saturation_jitter(bgr: np.ndarray, p: float = 0.5, low: float = 0.8, high: float = 1.2,
                      wrap: bool = False) -> np.ndarray:
    """Float HSV jitter of the original: with probability ``p`` scale S by U(low, high); RGB uint8 out.

    Values pushed outside [0, 255] are clipped; ``wrap``: truncated and taken modulo 256 as the original's
    uint8 cast did on x86 (-10.6 -> 246), for a faithful reproduction. Random numbers come from torch, so
    DataLoader workers get distinct streams.
    """
    hsv = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2HSV)
    if float(torch.rand(())) < p:
        hsv[..., 1] *= float(torch.empty(()).uniform_(low, high))
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if wrap:
        return np.mod(np.trunc(rgb).astype(np.int64), 256).astype(np.uint8)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def fas_transform(is_train: bool, mean: Sequence[float], std: Sequence[float],
                  input_size: int = 224) -> transforms.Compose:
    """PIL RGB -> tensor: bicubic resize to ``input_size``, (train) horizontal flip, normalise."""
    steps = [transforms.Resize((input_size, input_size), interpolation=transforms.InterpolationMode.BICUBIC)]
    if is_train:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(mean, std)])


class FASDataset(images.SkipsUnreadable, Dataset):
    """Fake frames (label 0) followed by real frames (label 1).

    An unreadable or oversized frame (the shared pixel guard) is named once in the log and counted
    (``util.images.unreadable_files``; a frame deleted after the lists were read too): training takes the next
    readable frame of the same list, testing leaves it out (``None`` image, dropped by ``collate_readable``).

    Training items: ``(img [3, S, S], label)`` with the saturation jitter (``saturation_wrap``: wrapped
    as the original, else clipped); test items: ``(img, label, video_id, path)``. ``transform`` (PIL RGB ->
    tensor) defaults to ``fas_transform(is_train, mean, std, input_size)``.
    """

    def __init__(self, fake_paths: Sequence[str], real_paths: Sequence[str], is_train: bool,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, input_size: int = 224,
                 transform: Callable | None = None, saturation_wrap: bool = False):
        if transform is None and (mean is None or std is None):
            raise ValueError("FASDataset needs mean and std, or a transform")
        self.paths = list(fake_paths) + list(real_paths)
        self.labels = [FAKE] * len(fake_paths) + [REAL] * len(real_paths)
        self.video_ids = video_ids(self.paths) if self.paths else np.zeros(0, np.int64)
        self.is_train, self.saturation_wrap = is_train, saturation_wrap
        self.transform = transform or fas_transform(is_train, mean, std, input_size)  # type: ignore[arg-type]
        self.samples = list(zip(self.paths, self.labels))
        self._track_unreadable()

    @property
    def video_names(self) -> list[str]:
        """The video of each item (its path without ``frame0.png``/``frame1.png``): the metrics' grouping key."""
        return [fas_video_key(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    unreadable_errors = (UnreadableImageError, FileNotFoundError)
    skip_message = "skipping FAS frame: %s"

    def load_sample(self, index: int) -> np.ndarray:
        return images.read_bgr(self.paths[index])

    def __getitem__(self, index: int):
        index, bgr = self.load_readable(index, replace=self.is_train)
        path = self.paths[index]
        if bgr is None:
            img = None
        else:
            rgb = saturation_jitter(bgr, wrap=self.saturation_wrap) if self.is_train else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            img = self.transform(Image.fromarray(rgb))
        if self.is_train:
            return img, self.labels[index]
        return img, self.labels[index], int(self.video_ids[index]), path


def build_train_sets(protocol: Protocol, root: str | os.PathLike, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, input_size: int = 224, transform: Callable | None = None,
                     saturation_wrap: bool = False) -> list[tuple[str, FASDataset, FASDataset]]:
    """``[(domain, real set, fake set)]`` for the protocol's training sources, in source order."""
    kw = dict(mean=mean, std=std, input_size=input_size, transform=transform, saturation_wrap=saturation_wrap)
    return [(d, FASDataset([], train_frames(root, d, "real"), True, **kw),  # type: ignore[arg-type]
             FASDataset(train_frames(root, d, "fake"), [], True, **kw))  # type: ignore[arg-type]
            for d in protocol.train_sources]


def build_test_set(domains: str | Sequence[str], root: str | os.PathLike, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, input_size: int = 224,
                   transform: Callable | None = None) -> FASDataset:
    """The test frames of one domain (the protocol's target) or of several (held-out source data for a
    threshold), fakes first."""
    lists = [test_frames(root, d) for d in ([domains] if isinstance(domains, str) else domains)]
    return FASDataset([p for fake, _ in lists for p in fake], [p for _, real in lists for p in real], False,
                      mean, std, input_size, transform)


def source_test_domains(protocol: Protocol, root: str | os.PathLike) -> list[str]:
    """Training sources that have test lists (CelebA-Spoof has none): held-out data for a threshold."""
    return [d for d in protocol.train_sources if d != protocol.target  # never the test data itself
            and list_path(root, d, "real", "test").is_file() and list_path(root, d, "fake", "test").is_file()]


class BalancedSourceBatches(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Endless batches with ``batch_size`` real and ``batch_size`` fake frames from every source.

    Each (source, class) has its own shuffled loader (``drop_last``), restarted when exhausted.
    A batch is ``[src1 real, src1 fake, src2 real, src2 fake, ...]``: images [2*S*B, 3, H, W] and
    labels [2*S*B] (1 real, 0 fake).
    """

    def __init__(self, train_sets: Sequence[tuple[str, Dataset, Dataset]], batch_size: int,
                 num_workers: int = 0, pin_memory: bool = False):
        self.loaders = []
        for domain, real, fake in train_sets:
            for cls, ds in (("real", real), ("fake", fake)):
                if len(ds) < batch_size:
                    raise FASDataError(f"domain {domain} has {len(ds)} {cls} training frames, fewer than "
                                       f"--batch_size {batch_size}")
                self.loaders.append(DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                               num_workers=num_workers, pin_memory=pin_memory))
        self._iters: list[Iterator | None] = [None] * len(self.loaders)

    def _next(self, i: int):
        if self._iters[i] is not None:
            batch = next(self._iters[i], None)
            if batch is not None:
                return batch
        self._iters[i] = iter(self.loaders[i])
        return next(self._iters[i])

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [self._next(i) for i in range(len(self.loaders))]
        return torch.cat([b[0] for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches])


def fas_mean_std(checkpoint: str | os.PathLike | None, imagenet: bool = False, embedded: object = None, *,
                 finetuned: bool = False, local: Path | None = None) -> tuple[list[float], list[float], str]:
    """Normalisation statistics ``(mean, std, source)``: ImageNet with ``--normalize_from_IMN``; else ``embedded``
    (a fine-tuned checkpoint's ``norm_stats``); else the first line of ``dirname(checkpoint)/pretrain_ds_mean_std.txt``
    (``hf://`` too). Then, for training from ``--pt_model``, ImageNet as the original (also without a checkpoint).

    ``finetuned`` (scoring a FAS checkpoint, whose folder the original never gives a statistics file): the
    statistics training used instead, i.e. those of the pre-trained release the FAS release started from
    (found locally, or fetched when ``checkpoint`` came from the hub itself), else the VGGFace2 values
    of every released pre-trained model. The source is logged. ``local``: the file ``checkpoint`` resolved to,
    when the caller has resolved it (``hf://`` is fetched once)."""
    if checkpoint and not imagenet:
        files = [(resolve_checkpoint_path(checkpoint) if local is None else Path(local)).parent / STATS_FILENAME]
    else:
        files = []
    if not finetuned:
        return resolve_mean_std(imagenet=imagenet, embedded=embedded, files=files,
                                fallback=(IMAGENET_MEAN, IMAGENET_STD), fallback_name="ImageNet")
    pretrained = None
    if checkpoint and not imagenet and embedded is None:
        pretrained, more = pretrained_stats_candidates(checkpoint)
        files += more
    mean, std, source = resolve_mean_std(imagenet=imagenet, embedded=embedded, files=files)  # VGGFace2 fallback
    why = (f" (the pre-trained release {pretrained.name} the FAS release was fine-tuned from)"
           if pretrained is not None and source in map(str, files[1:]) else "")
    logger.info("normalisation from %s%s: mean %s std %s", source, why, mean, std)
    return mean, std, source


def fas_training_mean_std(pt_model: str | os.PathLike | None, imagenet: bool, output_dir: str | os.PathLike,
                          local: Path | None = None) -> tuple[list[float], list[float], str]:
    """:func:`fas_mean_std` of a training run from ``pt_model`` (``local``: the file it resolved to), with the
    fine-tuning programs' warning when ``output_dir`` already holds a statistics file with other values (left
    by a run on other data)."""
    mean, std, source = fas_mean_std(pt_model, imagenet, local=local)
    warn_if_stale(Path(output_dir) / STATS_FILENAME, mean, std, source)
    return mean, std, source
