"""The preprocessing command lines say what they did: videos in custom face parsing, exit code 2 with
one line for a missing or empty source, FACER's instructions once, YAML-only --config, --max_faces,
and temporary files that no image lister can pick up."""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

from fsvfm.data.finetune import LabelledImageFolder
from fsvfm.data.pretrain import list_samples
from fsvfm.preprocess import layouts
from fsvfm.preprocess.cli import main_dataset_preprocess, main_face_parse
from fsvfm.preprocess.config import load_config
from fsvfm.util import fileio
from fsvfm.util.naming import IMAGE_EXTENSIONS
from tests.helpers import (
    FINETUNE_DEFAULT,
    PRETRAIN_DEFAULT,
    astronaut_bgr,
    face_frame,
    faces_dir,
    frames,
    tree,
    write_face_image,
    write_video,
)

PARSE = ["--workers", "1", "--backend", "landmarks"]


def _exit_line(capsys, run) -> str:
    """Run ``run()``, expect exit code 2 and one error line (the last on stderr, after the log); return it."""
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if ": error: " in line]) == 1 and ": error: " in err[-1], err
    return err[-1]


def test_face_parse_custom_processes_photos_and_videos(tmp_path, caplog):
    src, dst = tmp_path / "src", tmp_path / "ds"
    write_face_image(src / "a.png")
    write_face_image(src / "sub" / "b.png")
    write_video(src / "clip.mp4", n_frames=10)
    argv = ["--dataset", "custom", "--src", str(src), "--dst", str(dst), "--num_frames", "3", *PARSE]
    with caplog.at_level(logging.INFO):
        s = main_face_parse(PRETRAIN_DEFAULT, argv)
    assert f"{src}: 2 image(s), 1 video(s)" in caplog.text
    assert "custom video frames: 1 jobs" in caplog.text and "custom parse: 5 jobs" in caplog.text
    stems = {"a", "b"} | {f.removesuffix(".png") for f in frames("clip", (0, 4, 9))}
    images = {p for p in tree(dst) if p.startswith("images/")}
    assert images == {f"images/{n}.png" for n in stems}
    assert {p for p in tree(dst) if p.startswith("parsing_maps/")} == {f"parsing_maps/{n}.npy" for n in stems}
    assert (s.counts["done"], s.total()) == (3 + 5, 8)      # 3 frames cropped, then 5 images parsed
    again = main_face_parse(PRETRAIN_DEFAULT, argv)
    assert (again.counts["done"], again.counts["skipped"]) == (0, 8)


@pytest.mark.parametrize("main", ["face_parse", "dataset_preprocess"])
def test_missing_or_empty_src_exits_2_with_one_line(tmp_path, capsys, main):
    def run(src):
        argv = ["--dataset", "custom", "--src", str(src), "--dst", str(tmp_path / "out"), *PARSE]
        if main == "face_parse":
            return lambda: main_face_parse(PRETRAIN_DEFAULT, argv)
        return lambda: main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", argv[:-2])
    line = _exit_line(capsys, run(tmp_path / "nowhere"))
    assert line.endswith(f"error: --src {tmp_path / 'nowhere'}: no such folder "
                         "(give the folder of images or videos to process)")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    line = _exit_line(capsys, run(tmp_path / "empty"))
    assert f"error: --src {tmp_path / 'empty'} holds no image (.jpg" in line and "video (.mp4" in line


def test_named_dataset_with_no_input_exits_2(tmp_path, capsys):
    argv = ["--dataset", "VF2", "--opts", "VGGFace2_path", f"['{tmp_path / 'none'}']", "--log_dir", str(tmp_path)]
    line = _exit_line(capsys, lambda: main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", argv))
    assert "nothing to process for --dataset VF2" in line


def test_unknown_opts_key_is_one_line_with_a_hint(tmp_path, capsys):
    argv = ["--dataset", "DFD", "--opts", "DFD_num_frame", "8", "--log_dir", str(tmp_path)]
    line = _exit_line(capsys, lambda: main_dataset_preprocess(FINETUNE_DEFAULT, "finetune", argv))
    assert line.endswith("error: unknown config key(s) in --opts: 'DFD_num_frame' (did you mean 'DFD_num_frames'?); "
                         f"the known keys are in {FINETUNE_DEFAULT.resolve()}")


@pytest.mark.parametrize("dataset, keys, missing", [
    ("FF++_all", {"FF_train_split": "s/train.json", "FF_val_split": "s/val.json", "FF_test_split": "s/test.json"},
     "FaceForensics++ split file(s) not found: {d}/s/train.json (config key FF_train_split), {d}/s/val.json (config "
     "key FF_val_split), {d}/s/test.json (config key FF_test_split)"),
    ("CelebDFv2", {"CelebDFv2_path": "cdf/"},
     "CelebDFv2 test list not found: {d}/cdf/List_of_testing_videos.txt (config key CelebDFv2_path)"),
    ("DFDC", {"DFDC_path": "dfdc/"}, "DFDC labels not found: {d}/dfdc/labels.csv (config key DFDC_path)"),
])
def test_missing_benchmark_files_are_one_line_naming_path_and_key(tmp_path, capsys, monkeypatch, dataset, keys,
                                                                  missing):
    """A benchmark that is not downloaded (was a bare [Errno 2])."""
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", dataset, "--log_dir", str(tmp_path), "--opts", *[x for kv in keys.items() for x in kv]]
    line = _exit_line(capsys, lambda: main_dataset_preprocess(FINETUNE_DEFAULT, "finetune", argv))
    assert line.endswith(f"error: {missing.format(d=tmp_path)}; download the data set as datasets/README.md "
                         "describes, or set the key (--opts KEY PATH or --config FILE)")


def test_missing_facer_weights_print_the_instructions_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_face_image(tmp_path / "src" / "a.png")
    write_face_image(tmp_path / "src" / "b.png")
    argv = ["--dataset", "custom", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "ds"), "--workers", "1",
            "--backend", "facer", "--facer_model_dir", str(tmp_path / "weights")]
    with pytest.raises(SystemExit) as e:
        main_face_parse(PRETRAIN_DEFAULT, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("FACER weights not found in") == 1
    assert str(tmp_path / "weights" / "mobilenet0.25_Final.pth") in err
    assert "face_parsing.farl.lapa.main_ema_136500_jit191.pt" in err
    assert not (tmp_path / "ds").exists()                    # refused before any work


def test_distinct_job_errors_are_logged_once_each(tmp_path, caplog, monkeypatch):
    from fsvfm.preprocess import jobs

    def broken(*_):
        raise OSError("disk full")
    monkeypatch.setattr(jobs, "atomic_write_image", broken)
    for name in ("a", "b", "c"):
        write_face_image(tmp_path / "src" / f"{name}.png")
    argv = ["--dataset", "custom", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "out"), "--workers", "1"]
    with caplog.at_level(logging.INFO):
        s = main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", argv)
    assert s.counts["error"] == 3
    assert caplog.text.count("3 item(s) failed with: OSError: disk full") == 1


def test_config_must_be_yaml_and_is_never_executed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "cfg.py"
    evil.write_text("open('executed_marker', 'w').close()\nfrom yacs.config import CfgNode\ncfg = CfgNode()\n")
    with pytest.raises(ValueError, match=r"--config .*cfg\.py: only YAML files \(\.yaml, \.yml\) are read"):
        load_config(FINETUNE_DEFAULT, evil)
    argv = ["--dataset", "DFD", "--config", str(evil)]
    line = _exit_line(capsys, lambda: main_dataset_preprocess(FINETUNE_DEFAULT, "finetune", argv))
    assert "only YAML files" in line
    assert not (tmp_path / "executed_marker").exists()
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected 'KEY: value' lines, found a list"):
        load_config(FINETUNE_DEFAULT, tmp_path / "list.yaml")


def test_max_faces_keeps_every_face_with_distinct_names(tmp_path):
    src = tmp_path / "src"
    write_face_image(src / "astro.png", astronaut_bgr())         # dlib finds 2 faces (scores 1.16, 0.12)
    base = ["--dataset", "custom", "--src", str(src), "--workers", "1"]
    one = main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", [*base, "--dst", str(tmp_path / "one")])
    assert one.counts["done"] == 1 and {"astro.png"} == {p for p in tree(tmp_path / "one") if p.endswith(".png")}
    out = tmp_path / "all"
    s = main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", [*base, "--dst", str(out), "--max_faces", "0"])
    assert s.counts["done"] == 2 and {p for p in tree(out) if p.endswith(".png")} == {"astro.png", "astro_face1.png"}
    first, second = cv2.imread(str(out / "astro.png")), cv2.imread(str(out / "astro_face1.png"))
    assert np.array_equal(first, cv2.imread(str(tmp_path / "one" / "astro.png")))   # first face unchanged
    assert first.shape == (117, 117, 3) and second.shape == (117, 117, 3)            # 90 px boxes x 1.3
    parsed = tmp_path / "parsed"
    s = main_face_parse(PRETRAIN_DEFAULT, [*base, "--dst", str(parsed), "--crop", "--max_faces", "2",
                                           "--backend", "landmarks"])
    assert s.counts["done"] == 2
    assert {"images/astro.png", "images/astro_face1.png", "parsing_maps/astro.npy",
            "parsing_maps/astro_face1.npy"} <= tree(parsed)


def test_max_faces_on_a_group_photo(tmp_path):
    photo = faces_dir() / "2008_001322.jpg"                  # 3 faces
    write_face_image(tmp_path / "src" / "group.jpg", cv2.imread(str(photo)))
    argv = ["--dataset", "custom", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "out"),
            "--workers", "1", "--max_faces", "2"]
    s = main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", argv)
    assert s.counts["done"] == 2
    assert {p for p in tree(tmp_path / "out") if p.endswith(".jpg")} == {"group.jpg", "group_face1.jpg"}


def test_bad_max_faces_is_a_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as e:
        main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", ["--dataset", "custom", "--src", str(tmp_path / "src"),
                                                               "--dst", str(tmp_path / "o"), "--max_faces", "-1"])
    assert e.value.code == 2


def test_writers_leave_only_non_image_temporary_names(tmp_path, monkeypatch):
    """What a killed writer leaves behind is the temporary file: it must end in ``.tmp``."""
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (moved.append(os.path.basename(a)), real_replace(a, b)))
    src = tmp_path / "src"
    write_face_image(src / "a.png", face_frame())
    write_video(src / "clip.mp4", n_frames=2)
    main_face_parse(PRETRAIN_DEFAULT, ["--dataset", "custom", "--src", str(src), "--dst", str(tmp_path / "ds"),
                                       "--num_frames", "2", "--save_vis", *PARSE])
    assert len(moved) == 2 + 3 * 4 + 2                      # 2 frames; 3 x (map, vis, overlay, image); 2 logs
    assert all(name.startswith(".") and name.endswith(".tmp") for name in moved), moved


def test_leftover_temporary_files_are_not_listed_as_images(tmp_path):
    root = tmp_path / "ds"
    write_face_image(root / "images" / "a.png")
    (root / "parsing_maps").mkdir()
    np.save(root / "parsing_maps" / "a.npy", np.zeros((1, 4, 4), np.int8))
    write_face_image(tmp_path / "train" / "real_youtube" / "r.png")
    leftovers = [fileio._create_temp(p) for p in
                 (root / "images" / "b.png", root / "parsing_maps" / "b.npy", tmp_path / "train" / "real_youtube" / "s.png")]
    assert all(os.path.getsize(f) == 0 and f.endswith(".tmp") for f in leftovers)
    assert [p.name for p, _ in list_samples(root)[0]] == ["a.png"]
    assert [os.path.basename(p) for p, _ in LabelledImageFolder(str(tmp_path / "train")).samples] == ["r.png"]
    assert layouts.list_files(root / "images", IMAGE_EXTENSIONS) == [root / "images" / "a.png"]


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.atomic_write_text(tmp_path / "a.txt", "x")
        fileio.atomic_write_image(tmp_path / "b.png", face_frame())
        with fileio.atomic_path(tmp_path / "c.pth") as tmp:
            open(tmp, "wb").close()
        os.umask(0o002)
        fileio.atomic_write_bytes(tmp_path / "d.bin", b"x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.txt": 0o640, "b.png": 0o640, "c.pth": 0o640, "d.bin": 0o664}


def test_crop_problem_rules():
    from fsvfm.preprocess.faces import Face, crop_problem
    crop = Face((30, 30, 190, 190), 1.0)                  # 160 px box in a 224 px crop: 71%
    assert crop_problem([crop], 224, 224) is None
    assert crop_problem([crop, Face((0, 0, 40, 40), 0.1)], 224, 224) is None    # a small false positive
    assert crop_problem([crop, Face((0, 0, 90, 90), 0.5)], 224, 224) == "2 faces"
    assert crop_problem([], 224, 224) == "no face found"
    assert crop_problem([Face((0, 0, 70, 70), 1.0)], 1000, 224) == \
        "its face spans 31% of the frame, a face crop's about 75%"


def test_face_parse_refuses_photos_that_are_not_face_crops(tmp_path, capsys):
    """The 24-face collage and a photo without a face are refused with the fix, a face crop is parsed;
    --crop crops the collage's faces and --skip_crop_check parses it whole, as before."""
    from fsvfm.preprocess.faces import FaceCropper
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bald_guys.jpg", "dogs.jpg"):
        (src / name).symlink_to(faces_dir() / name)
    tom = cv2.imread(str(faces_dir() / "Tom_Cruise_avp_2014_4.jpg"))
    write_face_image(src / "tom_crop.png", FaceCropper().crop(tom)[0])
    base = ["--dataset", "custom", "--src", str(src), *PARSE]
    line = _exit_line(capsys, lambda: main_face_parse(PRETRAIN_DEFAULT, [*base, "--dst", str(tmp_path / "a")]))
    assert line.split(": ", 1)[1] == (f"error: 2 photo(s) in --src {src} are not face crops (bald_guys.jpg: 24 faces; "
                    f"all in {tmp_path / 'a' / 'face_parse_preprocess_custom_failures.txt'}); add --crop to detect "
                    "and crop their faces, or --skip_crop_check to parse them whole")
    assert {p for p in tree(tmp_path / "a") if p.startswith("images/")} == {"images/tom_crop.png"}
    failures = (tmp_path / "a" / "face_parse_preprocess_custom_failures.txt").read_text().splitlines()
    assert failures == [f"refused\t{src / 'bald_guys.jpg'}\tnot a face crop: 24 faces",
                        f"refused\t{src / 'dogs.jpg'}\tnot a face crop: no face found"]
    cropped = main_face_parse(PRETRAIN_DEFAULT, [*base, "--dst", str(tmp_path / "b"), "--crop"])
    assert (cropped.counts["done"], cropped.counts["no_face"], cropped.counts["refused"]) == (2, 1, 0)
    assert cv2.imread(str(tmp_path / "b" / "images" / "bald_guys.png")).shape == (224, 224, 3)
    whole = main_face_parse(PRETRAIN_DEFAULT, [*base, "--dst", str(tmp_path / "c"), "--skip_crop_check"])
    assert "images/bald_guys.png" in tree(tmp_path / "c") and whole.counts["refused"] == 0


@pytest.mark.parametrize("flag,tracked_calls", [([], 3), (["--full_res_detect"], 0)])
def test_full_res_detect_flag_reaches_the_video_worker(tmp_path, monkeypatch, flag, tracked_calls):
    from fsvfm.preprocess.faces import FaceCropper
    calls = []
    real = FaceCropper.detect_tracked
    monkeypatch.setattr(FaceCropper, "detect_tracked", lambda self, rgb, prev: calls.append(prev) or real(self, rgb, prev))
    write_video(tmp_path / "src" / "clip.mp4", n_frames=6)
    argv = ["--dataset", "custom", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "out"), "--workers", "1",
            "--num_frames", "3", *flag]
    s = main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", argv)
    assert s.counts["done"] == 3
    assert len(calls) == tracked_calls and (not calls or (calls[0] is None and calls[1] > 0))
