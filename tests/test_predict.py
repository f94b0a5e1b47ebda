"""``python -m fsvfm.predict`` and the ``Detector`` API on a tiny checkpoint of ``main_finetune_DfD.py``:
real faces (scikit-image's astronaut, and ../shared/faces when present), a generated video, and files that
must be reported (faceless, broken, missing)."""
from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fsvfm import predict
from fsvfm.main_test_DfD import DFD_TASK, DFD_TEST_SETS
from fsvfm.predict import Detector
from fsvfm.preprocess.faces import FaceCropper, square_box
from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.video import read_frames
from fsvfm.util.checkpoint import load_checkpoint
from tests.helpers import (
    detector_checkpoint,
    eval_argv,
    face_frame,
    faces_dir,
    run_tests_of,
    write_face_image,
    write_video,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return detector_checkpoint(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """photo (one face), group (three), a 10-frame clip, a faceless and a broken image."""
    root = tmp_path_factory.mktemp("inputs")
    face = face_frame()
    files = {"photo": write_face_image(root / "photo.jpg"),
             "group": write_face_image(root / "group.jpg", np.concatenate([face, face[:, ::-1], face], axis=1)),
             "clip": write_video(root / "clip.mp4", n_frames=10),
             "nofaces": write_face_image(root / "nofaces.jpg", np.full((120, 160, 3), 128, np.uint8)),
             "broken": root / "broken.jpg"}
    files["broken"].write_bytes(b"not a jpeg")
    return files


def detections(path: Path) -> list:
    """What the preprocessing detector finds in an image file (the reference for predict's faces)."""
    bgr = cv2.imread(str(path))
    return FaceCropper().detect(np.ascontiguousarray(bgr[:, :, ::-1]))


def expected_box(face, width: int, height: int) -> list[int]:
    x1, y1, size = square_box(face.rect, width, height, 1.3)
    return [x1, y1, x1 + size, y1 + size]


def test_done_when_command(ckpt, inputs, tmp_path, capsys):
    order = ["photo", "group", "clip", "nofaces", "broken"]
    out = tmp_path / "out.json"
    argv = ["--checkpoint", str(ckpt), *(str(inputs[k]) for k in order), "--output", str(out), "--device", "cpu"]
    assert predict.main(argv) == 0
    records = json.loads(out.read_text())
    assert [r["path"] for r in records] == [str(inputs[k]) for k in order]
    assert [r["type"] for r in records] == ["image", "image", "video", "image", "image"]
    photo, group, clip, nofaces, broken = records

    ref = detections(inputs["photo"])
    assert len(ref) == 1 and len(photo["faces"]) == 1
    face = photo["faces"][0]
    assert face["box"] == expected_box(ref[0], 200, 200) and face["detector_score"] == pytest.approx(ref[0].score)
    assert face["frame"] is None and face["score_real"] + face["score_fake"] == pytest.approx(1.0, abs=1e-6)
    assert photo["score_real"] == face["score_real"] and photo["error"] is None

    ref = detections(inputs["group"])
    assert len(group["faces"]) == len(ref) == 3
    assert [f["box"] for f in group["faces"]] == [expected_box(r, 600, 200) for r in ref]
    assert group["score_real"] == pytest.approx(np.mean([f["score_real"] for f in group["faces"]]))

    assert [f["frame"] for f in clip["faces"]] == list(range(10))  # fewer frames than --num_frames 32: all
    assert clip["score_real"] == pytest.approx(np.mean([f["score_real"] for f in clip["faces"]]))
    assert (nofaces["faces"], nofaces["score_real"], nofaces["error"]) == ([], None, "no face found")
    assert (broken["faces"], broken["score_real"], broken["error"]) == ([], None, "cannot read this file as an image")

    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["score_real", "verdict", "faces", "type", "input"] and len(lines) == 2 + 5 + 1
    assert lines[4].split()[2:4] == ["10", "video"] and lines[-1].startswith("5 inputs, 14 faces, 2 without a score")


def test_scores_equal_the_test_program(ckpt, inputs, tmp_path):
    """Crops written by the preprocessing and scored by main_test_DfD's code get the score predict gives
    the original photo / video frames (and the crop files themselves with --no_detect)."""
    root = tmp_path / "tests_root"
    folder = root / next(t.folder for t in DFD_TEST_SETS if t.name == "Celeb-DF-v1") / "test"
    worker = Worker(Options())
    crop = folder / "real" / "photo_frame_0.png"
    assert dict(worker.run(Job("crop_image", str(inputs["photo"]), (str(crop),))).counts) == {"done": 1}
    assert dict(worker.run(Job("crop_video", str(inputs["clip"]), (str(folder / "fake"),), "clip", 4)).counts) == {"done": 4}
    out = tmp_path / "test"
    run_tests_of(DFD_TASK, eval_argv(ckpt, out, "--test_root", str(root), "--test_sets", "Celeb-DF-v1"))
    with open(out / "scores_Celeb-DF-v1_frames.csv", newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["clip_frame_0.png", "clip_frame_3.png", "clip_frame_6.png", "clip_frame_9.png",
                            "photo_frame_0.png"]
    assert rows["photo_frame_0.png"]["video"] == "real/photo" and rows["photo_frame_0.png"]["label"] == "1"

    det = Detector.from_checkpoint(ckpt, device="cpu", num_frames=4)
    assert det.predict(inputs["photo"])["faces"][0]["score_real"] == pytest.approx(
        float(rows["photo_frame_0.png"]["score_real"]), abs=1e-5)
    video = det.predict(inputs["clip"])
    assert [f["frame"] for f in video["faces"]] == [0, 3, 6, 9]
    for f in video["faces"]:
        assert f["score_real"] == pytest.approx(float(rows[f"clip_frame_{f['frame']}.png"]["score_real"]), abs=1e-5)
    crop_score = Detector.from_checkpoint(ckpt, device="cpu", detect=False).predict(crop)["faces"][0]["score_real"]
    assert crop_score == pytest.approx(float(rows["photo_frame_0.png"]["score_real"]), abs=1e-5)
    video_row = next(csv.DictReader(open(out / "scores_Celeb-DF-v1.csv", newline="")))
    assert video_row["video"] == "fake/clip" and float(video_row["score_real"]) == pytest.approx(video["score_real"], abs=1e-5)


def test_api_accepts_paths_pil_and_arrays(ckpt, inputs, tmp_path):
    det = Detector.from_checkpoint(ckpt, device="cpu")
    png = write_face_image(tmp_path / "face.png")  # lossless, so the decoded pixels equal the array's
    rgb = np.ascontiguousarray(face_frame()[:, :, ::-1])
    by_path, by_array, by_pil = det.predict(png), det.predict(rgb), det.predict(Image.fromarray(rgb))
    assert by_path["path"] == str(png) and by_array["path"] is None and by_pil["type"] == "image"
    assert by_array["faces"] == by_pil["faces"] == by_path["faces"] and len(by_path["faces"]) == 1
    assert det.info["model"] == "vit_small_patch16" and det.info["input_size"] == 32 and det.info["task"] == "DfD"
    probs = det.score_crops([rgb[10:150, 20:160]])
    assert probs.shape == (1, 2) and probs.sum() == pytest.approx(1.0, abs=1e-6)

    one = Detector.from_checkpoint(ckpt, device="cpu", max_faces=1).predict(inputs["group"])
    assert len(one["faces"]) == 1 and one["faces"][0]["detector_score"] == pytest.approx(detections(inputs["group"])[0].score)
    sampled = Detector.from_checkpoint(ckpt, device="cpu", num_frames=3).predict(inputs["clip"])
    assert [f["frame"] for f in sampled["faces"]] == [0, 4, 9]
    every = Detector.from_checkpoint(ckpt, device="cpu", every=4).predict(str(inputs["clip"]))
    assert [f["frame"] for f in every["faces"]] == [0, 4, 8]
    whole = Detector.from_checkpoint(ckpt, device="cpu", detect=False).predict(inputs["nofaces"])
    assert whole["faces"][0]["box"] == [0, 0, 160, 120] and whole["faces"][0]["detector_score"] is None
    with pytest.raises(TypeError, match="uint8"):
        det.predict(rgb.astype(np.float32))


def test_batches_do_not_change_scores(ckpt, inputs):
    items = [inputs["group"], inputs["photo"], inputs["nofaces"], inputs["clip"]]
    one = list(Detector.from_checkpoint(ckpt, device="cpu", batch_size=1).predict_many(items))
    many = list(Detector.from_checkpoint(ckpt, device="cpu", batch_size=5).predict_many(items))
    assert [len(r["faces"]) for r in one] == [3, 1, 0, 10]
    for a, b in zip(one, many):
        assert [f["box"] for f in a["faces"]] == [f["box"] for f in b["faces"]]
        np.testing.assert_allclose([f["score_real"] for f in a["faces"]], [f["score_real"] for f in b["faces"]], atol=1e-6)


def test_folder_csv_and_visualisations(ckpt, inputs, tmp_path):
    folder = inputs["photo"].parent
    out, vis = tmp_path / "out.csv", tmp_path / "vis"
    assert predict.main(["--checkpoint", str(ckpt), str(folder), "--output", str(out), "--save_vis", str(vis),
                         "--num_frames", "2", "--device", "cpu", "--max_faces", "2"]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # sorted folder: broken, clip (frames 0 and 9), group (2 of 3 faces), nofaces, photo
    assert [(Path(r["path"]).name, r["frame"]) for r in rows] == [
        ("broken.jpg", ""), ("clip.mp4", "0"), ("clip.mp4", "9"), ("group.jpg", ""), ("group.jpg", ""),
        ("nofaces.jpg", ""), ("photo.jpg", "")]
    assert rows[0]["error"] == "cannot read this file as an image" and rows[0]["score_real"] == ""
    assert float(rows[1]["input_score_real"]) == pytest.approx((float(rows[1]["score_real"]) + float(rows[2]["score_real"])) / 2)
    assert sorted(p.name for p in vis.iterdir()) == ["001_clip_frame_0.jpg", "001_clip_frame_9.jpg", "002_group.jpg",
                                                    "004_photo.jpg"]
    drawn = cv2.imread(str(vis / "004_photo.jpg"))
    assert drawn.shape == (200, 200, 3) and not np.array_equal(drawn, cv2.imread(str(inputs["photo"])))


def test_usage_errors_exit_2(ckpt, inputs, tmp_path, capsys):
    photo = str(inputs["photo"])
    assert predict.main(["--checkpoint", str(tmp_path / "none.pth"), photo]) == 2
    assert f"checkpoint not found: {tmp_path / 'none.pth'}" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(ckpt), photo, "--output", str(tmp_path / "o.txt")]) == 2
    assert ".json or .csv" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(ckpt), str(tmp_path / "empty_dir_missing.mp4"), "--device", "cpu"]) == 0
    relabelled = load_checkpoint(ckpt)
    relabelled["task"] = "FAS"  # a DfD classifier's weights under the FAS task
    torch.save(relabelled, tmp_path / "fas.pth")
    assert predict.main(["--checkpoint", str(tmp_path / "fas.pth"), photo, "--device", "cpu"]) == 2
    assert f"checkpoint {tmp_path / 'fas.pth'} does not fit FASModel" in capsys.readouterr().err
    relabelled["task"] = "Other"
    torch.save(relabelled, tmp_path / "other.pth")
    assert predict.main(["--checkpoint", str(tmp_path / "other.pth"), photo, "--device", "cpu", "--no_detect"]) == 2
    assert "unknown task 'Other' (known: ['DfD', 'DiFF', 'FAS', 'Unified'])" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no face-crop mode for task 'Other'"):
        predict.crop_mode_for("Other")


def test_real_photos_of_shared_faces(ckpt):
    folder = faces_dir()
    photos = [folder / "Tom_Cruise_avp_2014_4.jpg", folder / "dogs.jpg", folder / "2008_002470.jpg"]
    records = list(Detector.from_checkpoint(ckpt, device="cpu").predict_many(photos))
    for path, record in zip(photos, records):
        ref = detections(path)
        h, w = cv2.imread(str(path)).shape[:2]
        assert [f["box"] for f in record["faces"]] == [expected_box(r, w, h) for r in ref]
    assert len(records[0]["faces"]) == 1 and records[1]["error"] == "no face found"


def test_checkpoint_is_read_once(ckpt, monkeypatch):
    """Finding the task and rebuilding the model share one read of the (possibly 1 GB) file."""
    from fsvfm import finetune_setup
    from fsvfm.util import checkpoint as ckpt_io
    reads = []

    def counting(path, *a, **kw):
        reads.append(Path(path).name)
        return ckpt_io.load_checkpoint(path, *a, **kw)

    monkeypatch.setattr(predict, "load_checkpoint", counting)
    monkeypatch.setattr(finetune_setup, "load_checkpoint", counting)
    model, _, info = predict.rebuild_classifier(ckpt)
    assert reads == [ckpt.name] and info["task"] == "DfD"


def test_pipeline_scores_equal_the_serial_way(ckpt, inputs):
    """The crop thread and cross-input batches change nothing: per input, decode every frame, detect, score."""
    det = Detector.from_checkpoint(ckpt, device="cpu", num_frames=4, batch_size=3)
    items = [inputs["group"], inputs["clip"], inputs["nofaces"], inputs["photo"]]
    records = list(det.predict_many(items))
    for item, record in zip(items, records):
        if item.suffix == ".mp4":
            frames = [(i, f) for i, f in read_frames(str(item), [0, 3, 6, 9], seek_gap=None)]
        else:
            frames = [(None, cv2.imread(str(item)))]
        faces = [(i, face) for i, bgr in frames for face in det.faces_of(np.ascontiguousarray(bgr[:, :, ::-1]))]
        probs = det.score_crops([face.image for _, face in faces])
        assert [(f["frame"], f["box"]) for f in record["faces"]] == [(i, list(face.box)) for i, face in faces]
        got = np.array([[f["scores"][n] for n in det.classes.names] for f in record["faces"]]).reshape(probs.shape)
        np.testing.assert_allclose(got, probs, rtol=0, atol=1e-6)
    assert [len(r["faces"]) for r in records] == [3, 4, 0, 1]


def crop_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "fsvfm-predict-crops"]


def test_crop_thread_ends_with_the_caller_and_passes_errors_on(ckpt, inputs):
    det = Detector.from_checkpoint(ckpt, device="cpu", batch_size=1)
    records = det.predict_many([inputs["photo"]] * 50)
    assert next(records)["faces"] and len(crop_threads()) == 1
    records.close()  # the caller stops early: the thread is not left cropping the other 49
    assert crop_threads() == []

    def items():
        yield inputs["photo"]
        raise RuntimeError("the caller's iterator broke")
    with pytest.raises(RuntimeError, match="iterator broke"):
        list(det.predict_many(items()))
    assert crop_threads() == []


def test_long_video_frames_are_reached_by_seeking(ckpt, tmp_path, monkeypatch):
    """3 frames of a 200-frame video: 3 frames decoded by the caller, not the 200 up to the last sample."""
    wide = np.pad(face_frame(), ((0, 0), (0, 400), (0, 0)))  # the face stays whole while the video pans it
    video = write_video(tmp_path / "long.mp4", n_frames=200, frame=wide)
    decoded, real = [], cv2.VideoCapture

    class Counting:
        def __init__(self, *a):
            self.cap = real(*a)

        def grab(self):
            decoded.append(1)
            return self.cap.grab()

        def read(self):
            decoded.append(1)
            return self.cap.read()

        def __getattr__(self, name):
            return getattr(self.cap, name)
    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    record = Detector.from_checkpoint(ckpt, device="cpu", num_frames=3).predict(video)
    assert [f["frame"] for f in record["faces"]] == [0, 99, 199] and record["warning"] is None
    assert len(decoded) == 3


def test_folder_progress_on_stderr_and_quiet(ckpt, inputs, capsys):
    argv = ["--checkpoint", str(ckpt), str(inputs["photo"]), str(inputs["group"]), str(inputs["nofaces"]),
            "--device", "cpu"]
    assert predict.main(argv) == 0
    out, err = capsys.readouterr()
    assert "predict: 100%" in err and "3/3" in err and ("input/s" in err or "s/input" in err)  # count, rate
    assert len(out.splitlines()) == 2 + 3 + 1 and "3/3" not in out  # the table stays whole on stdout
    assert predict.main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "3/3" not in err and "predict:" not in err and len(out.splitlines()) == 2 + 3 + 1


# ------------------------------------------------------------------------------ label placement
def _inside_and_apart(rects, width, height):
    assert all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for x1, y1, x2, y2 in rects)
    assert not any(predict._overlaps(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])


def test_labels_at_the_top_and_right_edges_stay_inside():
    """200 x 100 picture, 60 x 20 labels: a box touching the top gets its label inside its top edge (no room
    above); a box at the right edge gets its label moved left to end at x = 200, above the box."""
    top, right = (10, 0, 60, 50), (170, 40, 200, 90)
    assert predict.place_labels([top], [(60, 20)], 200, 100) == [(10, 0, 70, 20)]
    assert predict.place_labels([right], [(60, 20)], 200, 100) == [(140, 20, 200, 40)]
    assert predict.place_labels([top, right], [(60, 20)] * 2, 200, 100) == [(10, 0, 70, 20), (140, 20, 200, 40)]


def test_labels_of_overlapping_group_boxes_do_not_overlap():
    """Three overlapping boxes: the first label goes above its box; the second's spot above is taken, so it
    sits inside its box's top edge; the third's spots above and inside are taken, so it goes below its box."""
    boxes = [(20, 30, 60, 70), (40, 35, 80, 75), (30, 40, 70, 80)]
    rects = predict.place_labels(boxes, [(60, 20)] * 3, 200, 100)
    assert rects == [(20, 10, 80, 30), (40, 35, 100, 55), (30, 80, 90, 100)]
    _inside_and_apart(rects, 200, 100)


def test_annotated_labels_are_whole_and_apart():
    """Real captions through annotate: a top-edge face, a right-edge face and a group of three; every label
    rectangle is inside the picture, clear of the others, and filled with its class colour."""
    faces = [{"box": b, "label": "fake", "scores": {"fake": 0.9, "real": 0.1}}
             for b in ([0, 0, 40, 40], [280, 60, 320, 100], [120, 100, 170, 150], [135, 105, 185, 155],
                       [125, 110, 175, 160])]
    out, rects = predict.annotate(np.zeros((200, 320, 3), np.uint8), faces, return_labels=True)
    assert len(rects) == 5 and out.shape == (200, 320, 3)
    _inside_and_apart(rects, 320, 200)
    assert rects[0][:2] == (0, 0) and rects[1][2] == 320  # top edge: inside the box; right edge: flush, not cut
    for x1, y1, _, _ in rects:
        assert tuple(out[y1, x1]) == predict.PALETTE[1]
