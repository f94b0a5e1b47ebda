"""--shard K/N: disjoint, deterministic parts whose union is the whole run, each resumable with its own
summary, and --merge_shards giving the summary of the unsharded run."""
from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest

from fsvfm.preprocess import fas
from fsvfm.preprocess.cli import main_fas_preprocess
from fsvfm.preprocess.jobs import Job
from fsvfm.preprocess.layouts import copy_jobs
from fsvfm.preprocess.shards import parse_shard, shard_jobs, shard_of
from fsvfm.util.errors import UsageError
from tests.helpers import REPO, tree

FAS_DEFAULT = REPO / "datasets" / "finetune" / "preprocess_FAS" / "config" / "default.py"


def _jobs(tmp_path) -> list[Job]:
    images = [Job("crop_image", f"/d/id{i:03d}/{j}.jpg", (f"/o/id{i:03d}_{j}.jpg",)) for i in range(40) for j in (0, 1)]
    videos = [Job("crop_video", f"/v/{i:03d}.mp4", ("/o/frames",), f"{i:03d}", 32) for i in range(30)]
    chips = [Job("cefa_frame", "/cefa/AF-001/profile", (f"/o/c{k}.jpg",), str(k)) for k in range(10)]
    return images + videos + chips


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_the_jobs_whatever_the_order(tmp_path, n):
    jobs = _jobs(tmp_path)
    parts = [shard_jobs(jobs, (k, n)) for k in range(1, n + 1)]
    assert sum(len(p) for p in parts) == len(jobs) == 120                      # pairwise disjoint ...
    assert set().union(*map(set, parts)) == set(jobs)                          # ... and together all
    assert all(p for p in parts)                                               # 120 jobs: no shard is empty
    shuffled = random.Random(0).sample(jobs, len(jobs))
    assert [set(shard_jobs(shuffled, (k, n))) for k in range(1, n + 1)] == [set(p) for p in parts]
    assert shard_jobs(jobs, None) == jobs


def test_frames_are_copied_and_parsed_in_the_shard_that_extracted_them(tmp_path):
    out = tmp_path / "frames"
    out.mkdir()
    videos = [Job("crop_video", f"/v/{i:03d}_{i + 1:03d}.mp4", (str(out) + "/",), f"{i:03d}_{i + 1:03d}", 4)
              for i in range(20)]
    for v in videos:
        for k in (0, 5):
            (out / f"{v.name}_frame_{k}.png").write_bytes(b"")
    copies = copy_jobs(out, tmp_path / "fake_four", "Deepfakes_", ".png")
    parses = [Job("parse", c.src, (str(tmp_path / "ds"),), "x") for c in copies]
    assert len(copies) == 40
    of_video = {v.name: shard_of(v, 3) for v in videos}
    assert len(set(of_video.values())) == 3
    for j in copies + parses:
        name = j.src.rsplit("/", 1)[1].rsplit("_frame_", 1)[0]
        assert shard_of(j, 3) == of_video[name], j


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "2", "a/b", "1/2/3"])
def test_bad_shard_values_are_usage_errors(text):
    with pytest.raises(UsageError, match=r"--shard .*K/N with 1 <= K <= N"):
        parse_shard(text)
    assert parse_shard(" 3/4 ") == (3, 4)


def _surf(tmp_path, n_images: int = 12):
    """A SURF list of ``n_images`` frames (one listed twice) plus one missing file: 13 items."""
    data, surf = tmp_path / "data", tmp_path / "surf" / "Val" / "0000"
    (data / "WCS" / "txt").mkdir(parents=True)
    surf.mkdir(parents=True)
    lines = []
    for i in range(n_images):
        img = np.zeros((10, 10, 3), np.uint8)
        img[2:8, 1:i % 8 + 2] = 50 + i
        cv2.imwrite(str(surf / f"{i:06d}-color.png"), img)
        lines.append(f"surf/Val_0000_{i:06d}-color.png")
    lines.append("surf/Val_0000_999999-color.png")                           # not on disk: unreadable
    for kind in fas.WCS_LISTS:
        body = lines if kind == "fake_test" else lines[:1] if kind == "real_test" else []
        (data / "WCS" / "txt" / f"surf_{kind}.txt").write_text("".join(f"{x}\n" for x in body))
    return data


def _wcs(tmp_path, data, log, *extra):
    return main_fas_preprocess(FAS_DEFAULT, "WCS", [
        "--dataset", "surf", "--workers", "1", "--log_dir", str(log), *extra,
        "--opts", "finetune_data_path_fas", str(data), "surf_path", str(tmp_path / "surf")])


def test_three_shards_then_merge_equal_one_run(tmp_path, capsys):
    data = _surf(tmp_path / "a")
    whole = _wcs(tmp_path / "a", data, tmp_path / "a")
    assert whole.as_dict()["done"] == 12 and whole.as_dict()["unreadable"] == 1
    expected_frames = tree(data / "WCS" / "frame")

    data = _surf(tmp_path / "b")
    log = tmp_path / "b" / "logs"
    parts = [_wcs(tmp_path / "b", data, log, "--shard", f"{k}/3") for k in (1, 2, 3)]
    assert sum(p.total() for p in parts) == whole.total() == 13 and all(p.total() for p in parts)
    assert tree(data / "WCS" / "frame") == expected_frames
    for k in (1, 2, 3):
        written = json.loads((log / f"preprocess_FAS_WCS_surf_shard{k}of3_summary.json").read_text())
        assert written == parts[k - 1].as_dict()
    merged = _wcs(tmp_path / "b", data, log, "--merge_shards")
    assert merged.as_dict() == whole.as_dict()
    assert json.loads((log / "preprocess_FAS_WCS_surf_summary.json").read_text()) == whole.as_dict()
    assert (log / "preprocess_FAS_WCS_surf_failures.txt").read_text() == \
        (tmp_path / "a" / "preprocess_FAS_WCS_surf_failures.txt").read_text().replace(
            str(tmp_path / "a"), str(tmp_path / "b"))

    again = _wcs(tmp_path / "b", data, log, "--shard", "2/3")                  # a shard resumes on its own
    assert again.as_dict()["skipped"] == parts[1].as_dict()["done"] and again.counts["done"] == 0
    merged = _wcs(tmp_path / "b", data, log, "--merge_shards")                # its summary is the latest run's
    # (which shard holds the unreadable frame depends on the absolute tmp path: count it apart)
    assert merged.counts["done"] + merged.counts["skipped"] == 12 and merged.counts["unreadable"] == 1
    assert merged.counts["skipped"] == again.counts["skipped"] == parts[1].counts["done"]

    (log / "preprocess_FAS_WCS_surf_shard3of3_summary.json").unlink()
    with pytest.raises(SystemExit) as e:
        _wcs(tmp_path / "b", data, log, "--merge_shards")
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and "shard(s) 3/3 of preprocess_FAS_WCS_surf have no summary yet" in err[0], err
