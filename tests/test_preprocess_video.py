"""Frame sampling on short real-face videos: indices, names, dedupe, unreadable inputs, resume."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.video import frame_count, frame_name, read_frames, sample_indices, unique_indices
from tests.helpers import frames, tree, write_video


def test_sample_indices_match_linspace_truncation():
    assert sample_indices(10, 4) == [0, 3, 6, 9]             # linspace 0, 3, 6, 9
    assert sample_indices(300, 3) == [0, 149, 299]           # 149.5 truncates to 149
    assert sample_indices(10, None) == list(range(10))
    assert sample_indices(3, 5) == [0, 0, 1, 1, 2]           # the original's repeats
    assert unique_indices(3, 5) == [0, 1, 2]                 # written once each (D9)
    assert sample_indices(0, 32) == [] and sample_indices(5, 1) == [0]
    assert frame_name("000_003", 127) == "000_003_frame_127.png"


def test_video_frame_indices_and_names(tmp_path):
    video = write_video(tmp_path / "clip.mp4", n_frames=10)
    assert frame_count(str(video)) == 10
    got = list(read_frames(str(video), [9, 0, 4, 12]))
    assert [i for i, _ in got] == [0, 4, 9, 12]
    assert all(f is not None and f.shape == (200, 200, 3) for _, f in got[:3]) and got[3][1] is None
    # frame 4 is the face rolled by 4 pixels: decoding order is exact
    assert abs(float(got[1][1][:, 4:].mean()) - float(got[0][1][:, :-4].mean())) < 2.0

    worker = Worker(Options())
    out = worker.run(Job("crop_video", str(video), (str(tmp_path / "out"),), "clip", 4))
    assert dict(out.counts) == {"done": 4}
    assert tree(tmp_path / "out") == frames("clip", [0, 3, 6, 9])
    # second run: everything skipped; deleting one frame re-creates only that one
    assert dict(worker.run(Job("crop_video", str(video), (str(tmp_path / "out"),), "clip", 4)).counts) == \
        {"skipped": 4}
    (tmp_path / "out" / "clip_frame_6.png").unlink()
    again = worker.run(Job("crop_video", str(video), (str(tmp_path / "out"),), "clip", 4))
    assert dict(again.counts) == {"skipped": 3, "done": 1}


def test_short_video_dedupes_and_all_frames(tmp_path):
    video = write_video(tmp_path / "short.mp4", n_frames=3)
    worker = Worker(Options())
    out = worker.run(Job("crop_video", str(video), (str(tmp_path / "a"),), "short", 32))
    assert dict(out.counts) == {"done": 3}
    assert tree(tmp_path / "a") == frames("short", [0, 1, 2])
    out = worker.run(Job("crop_video", str(video), (str(tmp_path / "b"),), "short", None))
    assert dict(out.counts) == {"done": 3}


def test_unreadable_video_and_faceless_frames_are_counted(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    worker = Worker(Options())
    out = worker.run(Job("crop_video", str(bad), (str(tmp_path / "o"),), "bad", 4))
    assert dict(out.counts) == {"unreadable": 1} and out.failures[0][:2] == ("unreadable", str(bad))
    blank = write_video(tmp_path / "blank.mp4", 5, np.full((120, 120, 3), 128, np.uint8))
    out = worker.run(Job("crop_video", str(blank), (str(tmp_path / "o"),), "blank", 2))
    assert dict(out.counts) == {"no_face": 2}
    assert [f[1] for f in out.failures] == [f"{blank}#0", f"{blank}#4"]
    assert not Path(tmp_path / "o").exists() or tree(tmp_path / "o") == set()


def _numbered_video(path, n: int, fourcc: str):
    """``n`` distinct 64x48 frames (a noise image rolled by the frame number)."""
    import cv2
    base = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
    assert writer.isOpened(), fourcc
    for i in range(n):
        writer.write(np.roll(base, 2 * i, axis=1))
    writer.release()
    return str(path)


@pytest.mark.parametrize("fourcc,ext", [("mp4v", ".mp4"), ("XVID", ".avi"), ("MJPG", ".avi")])
def test_seeking_gives_the_frames_of_sequential_decoding(tmp_path, fourcc, ext):
    video = _numbered_video(tmp_path / f"v{ext}", 150, fourcc)
    wanted = sample_indices(150, 7) + [3, 150, 170]          # gaps of ~25 frames, a short one, past the end
    sequential = list(read_frames(video, wanted, seek_gap=None))
    seeking = list(read_frames(video, wanted, seek_gap=4))
    assert [i for i, _ in seeking] == [i for i, _ in sequential] == [0, 3, 24, 49, 74, 99, 124, 149, 150, 170]
    for (i, a), (_, b) in zip(sequential, seeking):
        assert (a is None) == (b is None) == (i >= 150), i
        assert a is None or np.array_equal(a, b), i


def test_an_inexact_seek_falls_back_to_sequential_decoding(tmp_path, monkeypatch):
    from fsvfm.preprocess import video as video_mod
    path = _numbered_video(tmp_path / "v.mp4", 90, "mp4v")
    calls = []

    def lost(cap, idx):                                      # a reader that cannot land on the frame
        calls.append(idx)
        return None
    monkeypatch.setattr(video_mod, "_seek_read", lost)
    got = list(read_frames(path, [0, 40, 80], seek_gap=4))
    assert calls == [40]                                     # one failed seek, then no more seeking
    expected = list(read_frames(path, [0, 40, 80], seek_gap=None))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, expected))


def test_tracked_video_search_matches_the_full_search(tmp_path):
    """From the second sampled frame on, the face is searched near the last one's size: the same frames
    get a crop, each within a few pixels of the original's full search (--full_res_detect)."""
    video = write_video(tmp_path / "clip.mp4", n_frames=12)
    runs = {}
    for full in (False, True):
        out = Worker(Options(full_res_detect=full)).run(Job("crop_video", str(video), (str(tmp_path / str(full)),),
                                                            "clip", 4))
        assert dict(out.counts) == {"done": 4}
        runs[full] = {p.name: cv2.imread(str(p)) for p in sorted((tmp_path / str(full)).iterdir())}
    assert set(runs[False]) == set(runs[True]) == frames("clip", [0, 3, 7, 11])
    for name, crop in runs[False].items():
        side, full_side = crop.shape[0], runs[True][name].shape[0]
        assert abs(side - full_side) <= 0.03 * full_side, (name, side, full_side)
