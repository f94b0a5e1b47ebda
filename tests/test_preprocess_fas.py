"""FAS preprocessing (spec 1.5): aligned chips on real photos, the two-frame rule, MCIO/WCS layouts, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from fsvfm.preprocess import fas
from fsvfm.preprocess.align import EYE_CENTRE, chip_matrix, template_points, transform_points
from fsvfm.preprocess.cli import main_fas_preprocess
from fsvfm.preprocess.config import load_config
from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.runner import Summary
from tests.helpers import REPO, faces_dir, tree

FAS_DEFAULT = REPO / "datasets" / "finetune" / "preprocess_FAS" / "config" / "default.py"
PHOTOS = ("Tom_Cruise_avp_2014_4.jpg", "2008_001009.jpg", "2009_004587.jpg")


@pytest.fixture(scope="module")
def detector():
    from fsvfm.preprocess.mtcnn import MTCNNDetector
    return MTCNNDetector()


def _expected_eyes(size: int = 224, padding: float = 0.37) -> np.ndarray:
    """Template eyes moved so that their midpoint sits at EYE_CENTRE (the chip's rule)."""
    eyes = template_points(size, padding)[:2]
    return eyes - eyes.mean(0) + np.array(EYE_CENTRE) * size


@pytest.mark.parametrize("photo", PHOTOS)
def test_eyes_land_on_the_template_in_real_photos(detector, photo):
    bgr = cv2.imread(str(faces_dir() / photo))
    face = detector.select(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert face is not None and face.points.shape == (5, 2)
    eyes = transform_points(chip_matrix(face.points), face.points)[:2]
    assert np.abs(eyes - _expected_eyes()).max() < 3.0


def test_detector_is_built_with_the_original_thresholds(detector):
    """P-, R- and O-Net thresholds of the MXNet MTCNN version the original's crop comes from."""
    assert detector.mtcnn.thresholds == [0.6, 0.7, 0.8]
    assert detector.mtcnn.min_face_size == 20 and detector.mtcnn.factor == 0.709


def test_redetected_chip_eyes_and_no_face_in_dogs(detector):
    bgr = cv2.imread(str(faces_dir() / "Tom_Cruise_avp_2014_4.jpg"))
    face = detector.select(np.ascontiguousarray(bgr[:, :, ::-1]))
    chip = cv2.warpAffine(bgr, chip_matrix(face.points), (224, 224))
    again = detector.select(np.ascontiguousarray(chip[:, :, ::-1]))
    assert np.abs(again.points[:2] - _expected_eyes()).max() < 4.0
    assert detector.detect(cv2.imread(str(faces_dir() / "dogs.jpg"))[:, :, ::-1].copy()) == []


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_custom_mode_photos_and_video_to_224_chips(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    face = cv2.resize(cv2.imread(str(faces_dir() / "Tom_Cruise_avp_2014_4.jpg")), (200, 284))
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "tom.jpg"), face)
    cv2.imwrite(str(src / "dogs.jpg"), cv2.imread(str(faces_dir() / "dogs.jpg")))
    # 20 frames, no face before frame 8: targets 6 and 16 -> chips from frames 8 and 16
    _write_video(src / "sub" / "clip.avi", [np.zeros_like(face)] * 8 + [face] * 12)
    argv = ["--dataset", "custom", "--src", str(src), "--dst", str(dst), "--workers", "1"]
    summary = main_fas_preprocess(FAS_DEFAULT, "MCIO", argv)
    assert summary.as_dict() == {"done": 3, "skipped": 0, "no_face": 1, "unreadable": 0, "error": 0, "excluded": 0}
    chips = {"tom.png", "sub_clip_frame0.png", "sub_clip_frame1.png"}
    assert tree(dst) == chips | {"preprocess_FAS_MCIO_custom_failures.txt", "preprocess_FAS_MCIO_custom_summary.json"}
    assert all(cv2.imread(str(dst / c)).shape == (224, 224, 3) for c in chips)
    again = main_fas_preprocess(FAS_DEFAULT, "MCIO", argv)     # resume: done chips are skipped
    assert (again.counts["skipped"], again.counts["done"], again.counts["no_face"]) == (3, 0, 1)


def test_two_frame_search_is_bounded_and_shares_a_frame(tmp_path, monkeypatch):
    """Frame i is grey level 10*i; a 'face' is found only in frames >= 17 (targets are 6 and 16)."""
    def fake_chip(worker, frame):
        level = int(round(frame.mean() / 10))
        return None if level < 17 else np.full((4, 4, 3), level, np.uint8)
    monkeypatch.setattr(fas, "aligned_chip", fake_chip)
    grey = [np.full((32, 32, 3), 10 * i, np.uint8) for i in range(20)]
    worker = Worker(Options())
    out = worker.run(Job("fas_video", str(_write_video(tmp_path / "v.avi", grey)), (str(tmp_path / "o"),), "v"))
    assert out.counts["done"] == 2
    assert [int(cv2.imread(str(tmp_path / "o" / n))[0, 0, 0]) for n in fas.fas_frame_names("v")] == [17, 17]
    none = worker.run(Job("fas_video", str(_write_video(tmp_path / "n.avi", grey[:16])), (str(tmp_path / "o"),), "n"))
    assert none.counts["no_face"] == 2 and len(none.failures) == 2     # terminates (D20)


def test_remove_black_borders_keeps_last_row_and_col():
    img = np.zeros((6, 7, 3), np.uint8)
    img[1:5, 2:6] = 9
    assert fas.remove_black_borders(img).shape == (4, 4, 3)
    assert fas.remove_black_borders(img[:, :, 0]).shape == (4, 4)
    assert fas.remove_black_borders(np.zeros((3, 3), np.uint8)).shape == (3, 3)


def test_mcio_rules():
    assert fas.replay_rule("/train/real/client001_session01_webcam_authenticate_adverse_1.mov") == \
        ("train", "real", "real_client001_session01_webcam_authenticate_adverse_1")
    assert fas.replay_rule("/devel/attack/fixed/attack_a.b.mov") == ("dev", "fake", "fixed_attack_a.b")  # D21
    assert fas.replay_rule("/enroll/train/x.mov") is None
    assert fas.oulu_rule("/Train_files/1_1_01_1.avi") == ("train", "real", "1_1_01_1")
    assert fas.oulu_rule("/Dev_files/1_1_21_3.avi") == ("dev", "fake", "1_1_21_3")
    assert fas.casia_rule("/test_release/7/HR_1.avi") == ("test", "real", "7_HR_1")
    assert fas.casia_rule("/train_release/3/5.avi") == ("train", "fake", "3_5")


def _cfg(tmp_path, **paths):
    opts = ["finetune_data_path_fas", str(tmp_path / "out")]
    for k, v in paths.items():
        opts += [k, str(v)]
    return load_config(FAS_DEFAULT, None, opts)


def test_msu_layout_and_dev_handling(tmp_path):
    msu = tmp_path / "MSU-MFSD"
    for rel in ("scene01/real/real_client002_android_SD_scene01.mp4", "scene01/attack/attack_client003_x.mov",
                "scene01/real/real_client009_android_SD_scene01.mp4"):
        (msu / rel).parent.mkdir(parents=True, exist_ok=True)
        (msu / rel).touch()
    (msu / "train_sub_list.txt").write_text("002\n")
    (msu / "test_sub_list.txt").write_text("3\n")
    cfg, summary = _cfg(tmp_path, msu_path=msu), Summary()
    jobs = fas.mcio_video_stage(cfg, "msu", summary)[1]()
    out = tmp_path / "out" / "MCIO" / "frame" / "msu"
    assert sorted((Path(j.dst[0]).relative_to(out).as_posix(), j.name) for j in jobs) == [
        ("test/fake", "attack_client003_x"), ("train/real", "real_client002_android_SD_scene01")]
    assert summary.as_dict()["excluded"] == 1 and "subject 009" in summary.failures[0][2]


def test_wcs_sources(tmp_path):
    cfg = _cfg(tmp_path, cefa_path=tmp_path / "cefa", wmca_path=tmp_path / "wmca", surf_path=tmp_path / "surf")
    job = fas.cefa_job(cfg, "2_015_1_1_1_03.jpg", tmp_path / "o.jpg")
    assert (Path(job.src).relative_to(tmp_path).as_posix(), job.name) == ("cefa/CA/CA-015/2_015_1_1_1/profile", "3")
    job = fas.wmca_job(cfg, "100_03_015_2_10_05.jpg", tmp_path / "o.jpg")
    assert (Path(job.src).relative_to(tmp_path).as_posix(), job.name) == ("wmca/100/03_015_2_10.hdf5", "05")
    assert fas.surf_source("Training_fake_part_CLKJ_AS0137_01_en_b.rssdk_color_121.jpg") == \
        "Training/fake_part/CLKJ_AS0137/01_en_b.rssdk/color/121.jpg"
    assert fas.surf_source("Val_0000_000000-color.jpg") == "Val/0000/000000-color.jpg"


def test_cefa_and_wmca_frames_are_written(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    for i in range(20):   # step 20 // 10 = 2: sample 3 is frame 6
        cv2.imwrite(str(profile / f"{i:04d}.jpg"), np.full((8, 8, 3), 10 * i, np.uint8))
    worker = Worker(Options())
    worker.run(Job("cefa_frame", str(profile), (str(tmp_path / "c.png"),), "3"))
    assert abs(int(cv2.imread(str(tmp_path / "c.png"))[0, 0, 0]) - 60) <= 2
    rgb = np.zeros((3, 6, 6), np.uint8)
    rgb[0, 1:5, 1:4] = 200                       # red block inside a black border
    with h5py.File(tmp_path / "w.hdf5", "w") as f:
        f.create_dataset("Frame_3/array", data=np.ones((3, 6, 6), np.uint8))
        f.create_dataset("Frame_5/array", data=rgb)
    worker.run(Job("wmca_frame", str(tmp_path / "w.hdf5"), (str(tmp_path / "w.png"),), "05"))
    out = cv2.imread(str(tmp_path / "w.png"))
    assert out.shape == (4, 3, 3) and out[0, 0].tolist() == [0, 0, 200]    # BGR on disk


def test_wcs_missing_list_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_fas_preprocess(FAS_DEFAULT, "WCS", ["--opts", "finetune_data_path_fas", str(tmp_path),
                                                 "--log_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cefa_fake_test.txt: list file not found" in err[0]


def test_mcio_custom_without_input_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for src, message in ((tmp_path / "empty", "holds no image"), (tmp_path / "absent", "no such folder")):
        with pytest.raises(SystemExit) as e:
            main_fas_preprocess(FAS_DEFAULT, "MCIO", ["--dataset", "custom", "--src", str(src),
                                                      "--dst", str(tmp_path / "dst"), "--workers", "1"])
        assert e.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
        assert len(err) == 1 and f"--src {src}" in err[0] and message in err[0], err


def test_wcs_run_writes_list_targets(tmp_path):
    data = tmp_path / "data"
    txt = data / "WCS" / "txt"
    txt.mkdir(parents=True)
    surf = tmp_path / "surf" / "Val" / "0000"
    surf.mkdir(parents=True)
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:8, 3:9] = 77
    cv2.imwrite(str(surf / "000000-color.png"), img)
    for kind in fas.WCS_LISTS:
        (txt / f"surf_{kind}.txt").write_text("surf/Val_0000_000000-color.png\n" if kind == "fake_shot" else "")
    argv = ["--dataset", "surf", "--workers", "1", "--log_dir", str(tmp_path),
            "--opts", "finetune_data_path_fas", str(data), "surf_path", str(tmp_path / "surf")]
    summary = main_fas_preprocess(FAS_DEFAULT, "WCS", argv)
    assert summary.counts["done"] == 1     # the SURF fake-shot list is processed (D24)
    assert cv2.imread(str(data / "WCS/frame/surf/Val_0000_000000-color.png")).shape == (6, 6, 3)
    assert json.loads((tmp_path / "preprocess_FAS_WCS_surf_summary.json").read_text())["done"] == 1


def test_custom_photos_keep_max_faces_chips(tmp_path, capsys):
    """--max_faces is accepted as the options table says: the 3-face photo gives 1, 2 or all 3 chips."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "group.jpg").symlink_to(faces_dir() / "2008_001322.jpg")      # MTCNN: 3 faces
    base = ["--dataset", "custom", "--src", str(src), "--workers", "1"]

    def chips(name, *extra):
        summary = main_fas_preprocess(FAS_DEFAULT, "MCIO", [*base, "--dst", str(tmp_path / name), *extra])
        return summary.counts["done"], {p for p in tree(tmp_path / name) if p.endswith(".png")}
    assert chips("one") == (1, {"group.png"})
    assert chips("two", "--max_faces", "2") == (2, {"group.png", "group_face1.png"})
    assert chips("all", "--max_faces", "0") == (3, {"group.png", "group_face1.png", "group_face2.png"})
    assert np.array_equal(cv2.imread(str(tmp_path / "all" / "group.png")), cv2.imread(str(tmp_path / "one" / "group.png")))
    assert cv2.imread(str(tmp_path / "all" / "group_face2.png")).shape == (224, 224, 3)
    with pytest.raises(SystemExit) as e:
        main_fas_preprocess(FAS_DEFAULT, "MCIO", ["--dataset", "oulu", "--max_faces", "2"])
    assert e.value.code == 2 and "only --dataset custom keeps several faces" in capsys.readouterr().err
