"""Hostile inputs built here: a Latin-1 file name (bytes), a small PNG that decodes to 20000x20000, a
truncated JPEG, a short video, a worker that dies, unwritable output folders, checkpoints that ask
for absurd models. Each must end in a record, a warning or one line with exit 2, never a crash."""
from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fsvfm import app, predict
from fsvfm.data.fas import FASDataset
from fsvfm.preprocess import runner
from fsvfm.preprocess.jobs import Job, Options, register_kind
from fsvfm.preprocess.video import frame_count, read_frames
from fsvfm.util import images
from fsvfm.util.checkpoint import CheckpointError, load_checkpoint
from fsvfm.util.errors import DataError
from tests.helpers import detector_checkpoint, write_face_image, write_video

LATIN1 = b"caf\xe9"  # what a Latin-1 archive or a Samba copy gives; not UTF-8


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit grey PNG of ``side`` x ``side`` pixels, one colour: a few dozen KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def hostile_name(folder: Path, suffix: str) -> str:
    """The ``str`` Python gives for ``caf\\xe9<suffix>`` in ``folder`` (a lone surrogate)."""
    return os.fsdecode(os.path.join(os.fsencode(folder), LATIN1 + suffix.encode()))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return detector_checkpoint(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 100_000
    return path


# ----------------------------------------------------------------------- 1: names that are not UTF-8
def test_latin1_names_are_read_as_images_and_videos(tmp_path):
    photo = write_face_image(tmp_path / "a.jpg")
    os.rename(photo, os.fsencode(tmp_path) + b"/" + LATIN1 + b".jpg")
    name = hostile_name(tmp_path, ".jpg")
    with pytest.raises(UnicodeEncodeError):
        name.encode("utf-8")  # the name OpenCV would crash on
    assert images.read_bgr(name).shape == (200, 200, 3)
    assert images.read_rgb(name).size == (200, 200)
    clip = write_video(tmp_path / "v.mp4", n_frames=4)
    os.rename(clip, os.fsencode(tmp_path) + b"/" + LATIN1 + b".mp4")
    video = hostile_name(tmp_path, ".mp4")
    assert frame_count(video) == 4
    assert [i for i, f in read_frames(video, [0, 3]) if f is not None] == [0, 3]
    assert not list(Path("/tmp").glob("fsvfm-media-*"))  # the temporary links are gone


def test_predict_scores_a_latin1_name_and_goes_on(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    write_face_image(folder / "b.jpg")
    os.rename(write_face_image(folder / "a.jpg"), os.fsencode(folder) + b"/" + LATIN1 + b".jpg")
    out = tmp_path / "r.json"
    assert predict.main(["--checkpoint", str(ckpt), str(folder), "--output", str(out), "--device", "cpu"]) == 0
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == 2 and all(r["error"] is None and len(r["faces"]) == 1 for r in records)


_CRASH_KIND = "test_crash_or_done"


def _crash_or_done(worker, job, out):
    if job.src == "crash":
        os._exit(3)  # as a segfaulting decoder: the process is gone without a word
    out.add("done")


register_kind(_CRASH_KIND, _crash_or_done)


@pytest.mark.slow
def test_a_worker_that_dies_never_hangs_the_pool():
    jobs = [Job(_CRASH_KIND, src, ()) for src in ("a", "b", "crash", "c", "d", "e", "f")]
    start = time.monotonic()
    summary = runner.run_jobs(jobs, Options(), workers=2)
    assert time.monotonic() - start < 60
    assert summary.counts["done"] == 6 and summary.counts["error"] == 1
    assert [f[1] for f in summary.failures] == ["crash"] and "worker process died" in summary.failures[0][2]


# ---------------------------------------------------------------------------- 2: the pixel guard
def test_bomb_is_refused_from_its_header_by_every_reader(bomb, tmp_path):
    for read in (images.read_bgr, images.read_rgb):
        with pytest.raises(images.ImageTooLargeError, match=r"20000x20000 \(400 megapixels\), over the limit of 179"):
            read(bomb)
    # FAS: a test frame is left out and counted; a training list of only unreadable frames stops
    fas = FASDataset([str(bomb)], [], False, mean=[0.5] * 3, std=[0.5] * 3)
    assert fas[0][0] is None and images.unreadable_files(fas) == [str(bomb)]
    with pytest.raises(DataError, match="unreadable samples in a row"):
        FASDataset([str(bomb)], [], True, mean=[0.5] * 3, std=[0.5] * 3)[0]
    message = app.upload_problem(bomb, 10 * 2 ** 20, (".png",))
    assert message == ("**bomb.png** is a 20000x20000 image (400 megapixels); this app takes images up to "
                       "179 megapixels (`--max_megapixels`).")
    # the flag raises the limit (here: lowered to 1 MP so that a 200x200 photo still passes, 2000x2000 not)
    try:
        images.set_max_pixels(1_000_000)
        assert images.read_bgr(write_face_image(tmp_path / "ok.png")).shape == (200, 200, 3)
        with pytest.raises(images.ImageTooLargeError):
            images.read_bgr(bomb_png(tmp_path / "b2.png", side=2000))
    finally:
        images.set_max_pixels(None)
    assert images.max_pixels() == images.DEFAULT_MAX_PIXELS


def test_predict_records_the_bomb_and_scores_the_rest(ckpt, bomb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bomb.png").write_bytes(bomb.read_bytes())
    write_face_image(folder / "b_photo.jpg")
    out = tmp_path / "r.csv"
    assert predict.main(["--checkpoint", str(ckpt), str(folder), "--output", str(out), "--device", "cpu"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "400 megapixels" in text and text.count("b_photo.jpg") == 1
    # the FAS crop mode reads through the same guard
    det = predict.Detector.from_checkpoint(ckpt, device="cpu", crop_mode="whole_image")
    assert "400 megapixels" in det.predict(bomb)["error"]


# ---------------------------------------------------------------- 3: predict never loses finished work
def test_any_failure_is_that_inputs_record(ckpt, tmp_path, monkeypatch):
    files = [write_face_image(tmp_path / f"{k}.jpg") for k in "abc"]
    det = predict.Detector.from_checkpoint(ckpt, device="cpu")
    real = det.faces_of
    calls = iter(range(3))

    def faces_of(rgb):
        if next(calls) == 1:
            raise MemoryError("cannot allocate 2.4 GiB")
        return real(rgb)
    monkeypatch.setattr(det, "faces_of", faces_of)
    records = list(det.predict_many(files))
    assert [r["error"] for r in records] == [None, "MemoryError: cannot allocate 2.4 GiB", None]
    assert [len(r["faces"]) for r in records] == [1, 0, 1] and records[1]["score_real"] is None


def test_partial_inputs_get_a_warning(ckpt, tmp_path):
    full = write_face_image(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) * 3 // 4])
    det = predict.Detector.from_checkpoint(ckpt, device="cpu", num_frames=10)
    cut = det.predict(tmp_path / "cut.jpg")
    assert cut["warning"] == "truncated JPEG (no end-of-image marker): the missing part was filled in grey"
    assert det.predict(tmp_path / "full.jpg")["warning"] is None
    clip = write_video(tmp_path / "clip.avi", n_frames=10)
    data = clip.read_bytes()
    short = tmp_path / "short.avi"
    short.write_bytes(data[: len(data) // 2])  # the header still claims 10 frames
    if frame_count(str(short)) != 10:
        import cv2
        pytest.skip(f"needs an OpenCV that reports the header's frame count of a cut AVI (this {cv2.__version__} "
                    "does not; the opencv-python-headless wheels from pip do)")
    record = det.predict(short)
    assert record["warning"].startswith("the video ended before frame") and "of the 10 its header claims" in record["warning"]


def test_unwritable_output_folders_stop_before_scoring(ckpt, tmp_path, capsys):
    photo = str(write_face_image(tmp_path / "p.jpg"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for flag, value in (("--output", blocker / "r.json"), ("--save_vis", blocker / "vis")):
        assert predict.main(["--checkpoint", str(ckpt), photo, flag, str(value), "--device", "cpu"]) == 2
        err = capsys.readouterr()
        assert err.err.count("\n") == 1 and f"error: {flag} {value}: cannot write in" in err.err
        assert "score_real" not in err.out  # nothing was scored


def test_results_are_written_when_a_later_input_breaks_the_run(ckpt, tmp_path, monkeypatch):
    files = [str(write_face_image(tmp_path / f"{k}.jpg")) for k in "ab"]
    out = tmp_path / "r.json"

    def broken_table_line(record, vocab=None):
        if record["path"] == files[1]:
            raise KeyboardInterrupt
        return "line"
    monkeypatch.setattr(predict, "table_line", broken_table_line)
    args = predict.get_args_parser().parse_args(["--checkpoint", str(ckpt), *files, "--output", str(out), "--device", "cpu"])
    with pytest.raises(KeyboardInterrupt):
        predict.run(args)
    assert [r["path"] for r in json.loads(out.read_text(encoding="utf-8"))] == files[:1]


# ------------------------------------------------------------------------- 4: untrusted checkpoints
def test_absurd_checkpoints_are_refused_in_a_second(ckpt, tmp_path, capsys):
    photo = str(write_face_image(tmp_path / "p.jpg"))
    good = load_checkpoint(ckpt)
    deep = dict(good, args={**good["args"], "model_kwargs": {"depth": 100000}})
    torch.save(deep, tmp_path / "deep.pth")
    huge = {"model": good["model"], "model_name": "vit_huge_patch14"}  # weights-only, wrong name
    torch.save(huge, tmp_path / "huge.pth")
    unknown = dict(good, model_name="vit_gigantic")
    torch.save(unknown, tmp_path / "unknown.pth")
    for name, expected in (("deep", "stored model setting depth=100000 is outside 1..128"),
                           ("huge", "does not fit VisionTransformer (vit_huge_patch14)"),
                           ("unknown", "'vit_gigantic' is not a registered classifier")):
        start = time.monotonic()
        assert predict.main(["--checkpoint", str(tmp_path / f"{name}.pth"), photo, "--device", "cpu"]) == 2
        assert time.monotonic() - start < 10  # the real network is never built
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    with pytest.raises(CheckpointError, match="billion parameters"):
        from fsvfm.util.checkpoint import check_model_kwargs
        check_model_kwargs({"depth": 128, "embed_dim": 8192}, "x.pth")


# --------------------------------------------------------------------------- 8: app housekeeping
def test_app_removes_served_pictures(tmp_path):
    old, new = tmp_path / f"{app.OUTPUT_PREFIX}old", tmp_path / f"{app.OUTPUT_PREFIX}new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "000_x.jpg").write_bytes(b"jpg")
    past = time.time() - app.SERVED_FILES_MAX_AGE_S - 5
    os.utime(old, (past, past))
    assert app.prune_served(tmp_path) == 1
    assert not old.exists() and (new / "000_x.jpg").exists()


def test_app_detect_refuses_a_bomb_before_decoding(bomb, tmp_path):
    status, records, galleries, tables = app.detect(str(bomb), {"x": None}, 10 * 2 ** 20, tmp_path)
    assert "400 megapixels" in status and records == {} and galleries == [[]]
    assert not list(tmp_path.glob(f"{app.OUTPUT_PREFIX}*"))
    assert np.prod(images.header_size(bomb.read_bytes())) == 400_000_000
