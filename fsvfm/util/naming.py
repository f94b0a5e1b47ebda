"""File and label naming shared by preprocessing, training and testing (no torch import).

* ``IMAGE_EXTENSIONS``: the image files every reader accepts.
* ``STATS_FILENAME``: a data set's normalisation statistics, written beside its checkpoints.
* ``FRAME_SEPARATOR``: frames are saved as ``{video}_frame_{i}.png``; metrics group by the prefix.
* ``VIDEO_KEYS``: the one rule per layout that says which video a frame belongs to (video-level metrics):
  ``frames`` (DfD/DiFF: folder + name before ``_frame_``), ``fas`` (the path without ``frame0/1.png``).
* ``ClassVocabulary``: a task's classes (short stable names in index order, display names) and the
  words that name them in folder names (DfD/DiFF: ``fake``/``real``; FAS: ``spoof``/``attack``/``fake``
  vs ``live``/``real``; the unified detector: ``real``/``deepfake``/``diffusion``/``spoof``).
* ``checkpoint_vocabulary``: the classes of a fine-tuned checkpoint: stored in it (``classes``), known
  for a released file that predates that key (``KNOWN_RELEASE_CLASSES``), the task's, or ``class_0..``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsvfm.util.errors import DataError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FRAME_SEPARATOR = "_frame_"
STATS_FILENAME = "pretrain_ds_mean_std.txt"


FAS_FRAME_SUFFIXES = ("frame0.png", "frame1.png")   # the two frames FAS preprocessing keeps per video


def video_name_from_path(path: str | os.PathLike) -> str:
    """Video of a frame: the file name before ``_frame_`` (a file without it is its own video)."""
    return os.path.basename(path).split(FRAME_SEPARATOR)[0]


def frame_video_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """DfD/DiFF grouping key of a frame: its folder (relative to ``root`` when given) and its video name
    (``video_name_from_path``), so same-named frames in different folders stay apart."""
    folder = os.path.dirname(path)
    if root is not None:
        folder = os.path.relpath(folder, root)
    return f"{folder}/{video_name_from_path(path)}"


def fas_video_key(path: str) -> str:
    """FAS grouping key: the path without ``frame0.png`` / ``frame1.png``: both frames of a video share it."""
    for suffix in FAS_FRAME_SUFFIXES:
        path = path.replace(suffix, "")
    return path


VIDEO_KEYS = {"frames": frame_video_key, "fas": fas_video_key}


@dataclass(frozen=True)
class ClassVocabulary:
    """``words[i]``: the (lower-case) words that mark a folder of class ``i`` (the first is the class's
    short name); ``positive``: the class whose probability is the score of a binary task (``1`` =
    real/live) and the anchor class of the FS-Adapter's contrastive loss; ``display``: names for
    people (default: the short names)."""

    words: tuple[tuple[str, ...], ...]
    positive: int = 1
    display: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """One name per class index (the first word), e.g. ``('fake', 'real')``."""
        return tuple(w[0] for w in self.words)

    @property
    def display_names(self) -> tuple[str, ...]:
        return self.display if len(self.display) == len(self.words) else self.names

    @property
    def binary(self) -> bool:
        """Two classes: reported as ``score_{positive}`` / ``score_{other}`` and decided at 0.5."""
        return len(self.words) == 2

    @property
    def negative(self) -> int:
        return 1 - self.positive

    @classmethod
    def from_names(cls, names: Sequence[str], display: Sequence[str] = ()) -> ClassVocabulary:
        """The vocabulary of class names given in index order (folders must contain the name); the
        positive class is the first of real / live / bonafide among them, else class 0."""
        names = [str(n).strip() for n in names]
        low = [n.lower() for n in names]
        if len(names) < 2 or not all(low) or len(set(low)) != len(low):
            raise UsageError(f"class names {names}: give at least two distinct, non-empty names in index order, "
                             "e.g. --classes real,deepfake,diffusion,spoof")
        positive = next((low.index(w) for w in POSITIVE_WORDS if w in low), 0)
        return cls(words=tuple((n,) for n in low), positive=positive, display=tuple(display))

    def label_of(self, folder: str, parent: str | os.PathLike = "") -> int:
        """The class a folder name names (a folder named exactly like a class is that class); none or
        several classes is a ``DataError`` (a ``ValueError``) naming it."""
        low = folder.lower()
        exact = [i for i, words in enumerate(self.words) if low in words]
        hits = exact or [i for i, words in enumerate(self.words) if any(w in low for w in words)]
        if len(hits) != 1:
            where = Path(parent) / folder if parent else folder
            choices = " / ".join("'" + "', '".join(w) + "'" for w in self.words)
            raise DataError(f"cannot tell the class of folder {str(where)!r}: its name must contain a word of "
                             f"exactly one class ({choices}), e.g. {self.names[-1]}_youtube, {self.names[0]}_four")
        return hits[0]


POSITIVE_WORDS = ("real", "live", "bonafide")
DFD_VOCABULARY = ClassVocabulary(words=(("fake",), ("real",)), positive=1)
# FAS: class 0 = spoof (attack), class 1 = live (bona fide); scores are P(live).
FAS_VOCABULARY = ClassVocabulary(words=(("spoof", "attack", "fake"), ("live", "real")), positive=1)
# The unified detector (real / deepfake / diffusion / spoof, in the released head's order); folder words
# "deepfake" and "aigc" are whole words here, so a plain "fake" folder is refused rather than guessed.
UNIFIED_VOCABULARY = ClassVocabulary(
    words=(("real", "bonafide", "bona_fide", "live"), ("deepfake", "faceswap", "face_swap"),
           ("diffusion", "aigc"), ("spoof", "attack", "presentation")),
    positive=0, display=("Real & Bonafide", "Deepfake", "Diffusion & AIGC", "Spoofing & Presentation attacks"))

# Released files that predate the ``classes`` key: repository path -> classes of their head
UNIFIED_RELEASE_PATH = "finetuned_models/Unified-detector/v1_Fine-tuned_on_4_classes/checkpoint-min_train_loss.pth"
KNOWN_RELEASE_CLASSES: dict[str, ClassVocabulary] = {UNIFIED_RELEASE_PATH: UNIFIED_VOCABULARY}
KNOWN_PATH_PARTS = 3  # a copy is recognised by its last folders and file name (hub cache, hub download)


def generic_vocabulary(n: int) -> ClassVocabulary:
    return ClassVocabulary(words=tuple((f"class_{i}",) for i in range(n)), positive=0)


def known_release_classes(paths: Sequence[str | os.PathLike], n: int) -> ClassVocabulary | None:
    """The known classes of a released file, recognised by the end of one of its ``paths``."""
    for release, vocab in KNOWN_RELEASE_CLASSES.items():
        tail = tuple(release.split("/")[-KNOWN_PATH_PARTS:])
        if len(vocab.names) == n and any(tuple(Path(str(p)).parts[-KNOWN_PATH_PARTS:]) == tail for p in paths):
            return vocab
    return None


def checkpoint_vocabulary(checkpoint: Mapping, paths: Sequence[str | os.PathLike], n: int,
                          task_vocabulary: ClassVocabulary | None = None,
                          given: Sequence[str] | None = None) -> tuple[ClassVocabulary, str]:
    """``(classes, where they came from)`` of a classifier with ``n`` outputs: ``given`` (a command
    line's ``--classes``), the checkpoint's ``classes``, the known table of released files, the task's
    vocabulary when it has ``n`` classes, else ``class_0..class_{n-1}`` with a warning (never another
    task's names). A count that does not match ``n`` is a ``UsageError``."""
    stored = checkpoint.get("classes")
    for names, source in ((given, "--classes"), (stored, "checkpoint")):
        if names:
            if len(names) != n:
                raise UsageError(f"{paths[0]}: {source} names {len(names)} classes ({', '.join(map(str, names))}) "
                                 f"but the model has {n} outputs")
            same = [v for v in (task_vocabulary, DFD_VOCABULARY, FAS_VOCABULARY, UNIFIED_VOCABULARY)
                    if v is not None and list(v.names) == [str(x).lower() for x in names]]
            if same:  # keeps the folder synonyms and display names
                return same[0], source
            display = (checkpoint.get("class_display") or ()) if source == "checkpoint" else ()
            return ClassVocabulary.from_names(names, display if len(display) == n else ()), source
    known = known_release_classes(paths, n)
    if known is not None:
        return known, "known release"
    if task_vocabulary is not None and len(task_vocabulary.names) == n:
        return task_vocabulary, "task"
    logger.warning("%s has %d classes and names none of them: reporting them as class_0..class_%d; give "
                   "--classes NAME,NAME,... in index order to name them", paths[0], n, n - 1)
    return generic_vocabulary(n), "unnamed"
