"""The FAS list writer (fsvfm.preprocess.fas_lists): what it writes, the FAS reader reads (--config custom)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsvfm.data import fas as fd
from fsvfm.preprocess import fas_lists
from fsvfm.util.errors import DataError, UsageError
from tools.synthetic_data import render_fas_face

MEAN = STD = (0.5, 0.5, 0.5)


def write_frames(folder: Path, cls: str, videos: int, names=("frame0", "frame1")) -> None:
    rng = np.random.default_rng(len(cls) + videos)
    for v in range(videos):
        for n in names:
            path = folder / cls / f"vid{v}_{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_fas_face(rng, 16, cls != "live", np.ones(3))).save(path)


def test_random_video_split_is_read_back_by_the_fas_reader(tmp_path, capsys):
    src, root = tmp_path / "frames", tmp_path / "fas"
    write_frames(src, "live", 4)
    write_frames(src, "spoof_print", 4)
    fas_lists.main(fas_lists.get_args_parser().parse_args(["--src", str(src), "--dst", str(root)]))
    txt = root / "WCS" / "txt"
    assert sorted(p.name for p in txt.iterdir()) == [f"custom_{c}_{s}.txt" for c in ("fake", "real")
                                                     for s in ("test", "train")]
    assert f"{txt / 'custom_real_train.txt'}: 6 frames, 3 video(s)" in capsys.readouterr().out
    # frames outside the tree are listed by absolute path; the reader joins and finds them
    sets = fd.build_train_sets(fd.get_protocol("custom"), root, MEAN, STD, input_size=16)
    assert [(d, len(r), len(f)) for d, r, f in sets] == [("custom", 6, 6)]
    assert set(sets[0][1].labels) == {fd.REAL} and all("/live/" in p for p in sets[0][1].paths)
    test = fd.build_test_set("custom", root, MEAN, STD, input_size=16)
    assert len(test) == 4 and test.labels == [fd.FAKE] * 2 + [fd.REAL] * 2
    assert len(set(test.video_ids.tolist())) == 2                     # frame0 + frame1 = one video
    train_videos = {fd.fas_video_key(p) for _, r, f in sets for p in r.paths + f.paths}
    assert not train_videos & set(test.video_names)                   # whole videos per split
    assert fd.source_test_domains(fd.get_protocol("custom"), root) == []  # no threshold from the test data
    img, label, _, _ = test[3]
    assert img.shape == (3, 16, 16) and label == fd.REAL


def test_own_train_test_folders_below_the_frame_root_are_relative(tmp_path):
    root = tmp_path / "fas"
    src = root / "WCS" / "frame" / "custom"
    for split, n in (("train", 2), ("test", 1)):
        write_frames(src / split, "real", n, names=("img",))
        write_frames(src / split, "attack", n, names=("img",))
    fas_lists.write_fas_lists(src, root)
    lines = (root / "WCS/txt/custom_fake_test.txt").read_text().splitlines()
    assert lines == ["custom/test/attack/vid0_img.png"]
    fake, real = fd.test_frames(root, "custom")
    assert (len(fake), len(real)) == (1, 1) and Path(real[0]).is_file()


def test_mistakes_name_the_fix(tmp_path):
    src = tmp_path / "frames"
    write_frames(src, "live", 1)
    write_frames(src, "spoof", 3)
    with pytest.raises(DataError, match=r"\(live\): 1 video\(s\); a train/test split needs at least 2"):
        fas_lists.write_fas_lists(src, tmp_path / "fas")
    (src / "live" / "clip.mp4").write_bytes(b"x")
    with pytest.raises(UsageError, match="preprocess_MCIO.py --dataset custom --src VIDEOS/live"):
        fas_lists.write_fas_lists(src, tmp_path / "fas")
    (src / "live" / "clip.mp4").unlink()
    write_frames(src, "live", 3, names=("frame0",))                   # frame0 without its frame1 twin
    (src / "live" / "vid0_frame1.png").unlink()
    with pytest.raises(DataError, match="without their .frame1. twin"):
        fas_lists.write_fas_lists(src, tmp_path / "fas", test_fraction=0.99)
    assert not (tmp_path / "fas").exists()                            # nothing half-written


def test_missing_lists_are_named_all_at_once(tmp_path):
    with pytest.raises(fd.FASDataError) as e:
        fd.check_protocol_lists(fd.get_protocol("M"), tmp_path)
    msg = str(e.value)
    assert msg.startswith("10 list files of --config M not found: ")
    for d in ("oulu", "casia", "replay", "celeb"):
        assert f"{d}_real_train.txt" in msg and f"{d}_fake_train.txt" in msg
    assert "msu_real_test.txt" in msg and "msu_fake_test.txt" in msg and "fsvfm.preprocess.fas_lists" in msg


def test_the_fas_task_checks_every_list_before_reading_one(tmp_path):
    import argparse

    from fsvfm.tasks import fas as engine_fas
    write_frames(tmp_path / "frames", "live", 2)
    write_frames(tmp_path / "frames", "spoof", 2)
    fas_lists.write_fas_lists(tmp_path / "frames", tmp_path / "fas")
    args = argparse.Namespace(config="C", fas_data_root=str(tmp_path / "fas"))
    with pytest.raises(fd.FASDataError, match=r"^10 list files of --config C not found: .*oulu_real_train\.txt"):
        engine_fas.build_fas_datasets(args, fd.get_protocol("C"), None, None)
    (tmp_path / "fas/WCS/txt/custom_fake_test.txt").unlink()
    with pytest.raises(fd.FASDataError, match=r"custom_fake_test\.txt: list file not found \(.*fas_lists"):
        engine_fas.build_fas_datasets(args, fd.get_protocol("custom"), None, None)
