"""The shared skip-unreadable mixin: replacement by the next sample, each file flagged and named once,
the no-replacement (evaluation) mode, and the stop after MAX_UNREADABLE_IN_A_ROW in a row."""
from __future__ import annotations

import logging

import pytest

from fsvfm.util.errors import DataError
from fsvfm.util.images import MAX_UNREADABLE_IN_A_ROW, SkipsUnreadable, UnreadableImageError, unreadable_files


class _Files(SkipsUnreadable):
    def __init__(self, n: int, bad: set[int]) -> None:
        self.samples, self.bad, self.reads = [(f"f{i}.png", 0) for i in range(n)], bad, 0
        self._track_unreadable()

    def load_sample(self, index: int) -> str:
        self.reads += 1
        if index in self.bad:
            raise UnreadableImageError(self.samples[index][0])
        return self.samples[index][0]


def test_unreadable_is_replaced_and_named_once(caplog):
    data = _Files(5, bad={1, 2})
    with caplog.at_level(logging.WARNING):
        assert data.load_readable(1) == (3, "f3.png")
        assert data.load_readable(2) == (3, "f3.png")   # f2 is flagged already: not named again
    assert [r.getMessage() for r in caplog.records] == ["skipping f1.png", "skipping f2.png"]
    assert unreadable_files(data) == ["f1.png", "f2.png"]
    assert data.load_readable(2, replace=False) == (2, None)


def test_too_many_in_a_row_is_a_data_error():
    data = _Files(MAX_UNREADABLE_IN_A_ROW + 5, bad=set(range(MAX_UNREADABLE_IN_A_ROW + 5)))
    with pytest.raises(DataError, match=f"{MAX_UNREADABLE_IN_A_ROW} unreadable samples in a row from f0.png"):
        data.load_readable(0)
    assert data.reads == MAX_UNREADABLE_IN_A_ROW
    assert len(unreadable_files(data)) == MAX_UNREADABLE_IN_A_ROW
