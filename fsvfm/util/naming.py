"""File and label naming shared by preprocessing, training and testing (no torch import).

* ``IMAGE_EXTENSIONS``: the image files every reader accepts.
* ``FRAME_SEPARATOR``: frames are saved as ``{video}_frame_{i}.png``; metrics group by the prefix.
* ``ClassVocabulary``: a task's classes and the words that name them in folder names (DfD/DiFF:
  ``fake``/``real``; FAS: ``spoof``/``attack``/``fake`` vs ``live``/``real``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fsvfm.util.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FRAME_SEPARATOR = "_frame_"


def video_name_from_path(path: str | os.PathLike) -> str:
    """Video of a frame: the file name before ``_frame_`` (a file without it is its own video)."""
    return os.path.basename(path).split(FRAME_SEPARATOR)[0]


@dataclass(frozen=True)
class ClassVocabulary:
    """``words[i]``: the (lower-case) words that mark a folder of class ``i``; ``positive``: the
    class whose probability is the score (``1`` = real/live for every task so far)."""

    words: tuple[tuple[str, ...], ...]
    positive: int = 1

    @property
    def names(self) -> tuple[str, ...]:
        """One name per class index (the first word), e.g. ``('fake', 'real')``."""
        return tuple(w[0] for w in self.words)

    def label_of(self, folder: str, parent: str | os.PathLike = "") -> int:
        """The class a folder name names; none or several classes is a ``DataError`` (a ``ValueError``)
        naming it."""
        low = folder.lower()
        hits = [i for i, words in enumerate(self.words) if any(w in low for w in words)]
        if len(hits) != 1:
            where = Path(parent) / folder if parent else folder
            choices = " / ".join("'" + "', '".join(w) + "'" for w in self.words)
            raise DataError(f"cannot tell the class of folder {str(where)!r}: its name must contain a word of "
                             f"exactly one class ({choices}), e.g. {self.names[-1]}_youtube, {self.names[0]}_four")
        return hits[0]


DFD_VOCABULARY = ClassVocabulary(words=(("fake",), ("real",)), positive=1)
# FAS: class 0 = spoof (attack), class 1 = live (bona fide); scores are P(live).
FAS_VOCABULARY = ClassVocabulary(words=(("spoof", "attack", "fake"), ("live", "real")), positive=1)
