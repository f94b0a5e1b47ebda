"""Each data set's raw layout in miniature -> exactly the output trees of spec 1.2-1.4.

The raw trees hold short OpenCV videos and images of a real face; a YAML config with paths
relative to its own folder points the scripts at them (so the config-relative rule is tested too).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fsvfm.preprocess.cli import main_dataset_preprocess, main_face_parse
from tests.helpers import FINETUNE_DEFAULT, PRETRAIN_DEFAULT, frames, tree, write_face_image, write_video

MANIPS = ("DeepFakes", "Face2Face", "FaceSwap", "NeuralTextures")
FF_PAIRS = {"train": ("000", "001"), "val": ("002", "003"), "test": ("004", "005")}
REAL8 = [0, 1, 2, 3, 5, 6, 7, 9]        # linspace(0, 9, 8) truncated
TWO = [0, 9]                             # linspace(0, 9, 2)

FINETUNE_YAML = """\
FF_train_split: ../data/FaceForensics/dataset/splits/train.json
FF_val_split: ../data/FaceForensics/dataset/splits/val.json
FF_test_split: ../data/FaceForensics/dataset/splits/test.json
FF_real_path: ../data/FaceForensics/original_sequences/youtube/
FF_fake_path: ../data/FaceForensics/manipulated_sequences/
FF_split_face_ds: ../data/FaceForensics/facial_images_split/
FF_num_frames: 2
finetune_data_path_dfd: ../out/dfd/
DFD_real: ../data/FaceForensics/original_sequences/actors/
DFD_fake: ../data/FaceForensics/manipulated_sequences/DeepFakeDetection/
DFD_split_face_ds: ../data/FaceForensics/facial_images_split/
DFD_num_frames: 2
CelebDFv1_path: ../data/Celeb-DF/
CelebDFv1_num_frames: 2
CelebDFv2_path: ../data/Celeb-DF-v2/
CelebDFv2_num_frames: 2
CelebDF_plusplus_path: ../data/Celeb-DF++/
CelebDF_plusplus_num_frames: 2
DFDC_path: ../data/DFDC/test/
DFDC_num_frames: 2
DFDC_P_path: ../data/DFDCP/
DFDC_P_num_frames: 2
DFIW_path: ../data/deepfake_in_the_wild/
finetune_data_path_diff: ../out/diff/
DiFF_path: ../data/DiFF/
"""

PRETRAIN_YAML = """\
VGGFace2_path: [../data/VGG-Face2/train, ../data/VGG-Face2/test]
VGGFace2_face_ds: ../data/VGG-Face2/facial_images/
FF_train_split: ../data/FaceForensics/dataset/splits/train.json
FF_val_split: ../data/FaceForensics/dataset/splits/val.json
FF_test_split: ../data/FaceForensics/dataset/splits/test.json
FF_real_path: ../data/FaceForensics/original_sequences/youtube/
FF_split_face_ds: ../data/FaceForensics/facial_images_split/
FF_num_frames: 3
YTFace_path: [../data/YoutubeFace/frame_images_DB/]
YTFace_face_ds: ../data/YoutubeFace/facial_images/
pretrain_data_path: ../out/pretrain/
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n_frames=10)


def put(clip: Path, root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, root / rel)


@pytest.fixture
def ws(tmp_path, clip) -> Path:
    """Workspace with cfg/{finetune,pretrain}.yaml; raw data is added by each test."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "finetune.yaml").write_text(FINETUNE_YAML)
    (tmp_path / "cfg" / "pretrain.yaml").write_text(PRETRAIN_YAML)
    return tmp_path


def make_ff(ws: Path, clip: Path) -> None:
    ff = ws / "data" / "FaceForensics"
    for split, pair in FF_PAIRS.items():
        (ff / "dataset" / "splits").mkdir(parents=True, exist_ok=True)
        (ff / "dataset" / "splits" / f"{split}.json").write_text(json.dumps([list(pair)]))
        put(clip, ff, f"original_sequences/youtube/c23/videos/{pair[0]}.mp4")
        put(clip, ff, *[f"manipulated_sequences/{m}/c23/videos/{pair[0]}_{pair[1]}.mp4" for m in MANIPS])
    put(clip, ff, "original_sequences/youtube/c23/videos/999.mp4")     # in no split file


def finetune(ws: Path, dataset: str, *extra: str):
    return main_dataset_preprocess(FINETUNE_DEFAULT, "finetune",
                                   ["--dataset", dataset, "--config", str(ws / "cfg" / "finetune.yaml"),
                                    "--workers", "1", "--log_dir", str(ws / "logs"), *extra])


def test_ff_all_and_each(ws, clip):
    make_ff(ws, clip)
    s = finetune(ws, "FF++_all")
    assert s.as_dict() == {"done": 3 * 8 + 12 * 2 + 3 * 8 + 12 * 2, "skipped": 0, "no_face": 0,
                           "unreadable": 0, "error": 0, "excluded": 1}
    failures = (ws / "logs" / "preprocess_FFpp_all_failures.txt").read_text()
    assert failures == f"excluded\t{ws / 'data/FaceForensics/original_sequences/youtube/c23/videos/999.mp4'}" \
                       "\tid in no split file\n"
    expected = set()
    for split, (t, src) in FF_PAIRS.items():
        expected |= {f"{split}/real_youtube/{n}" for n in frames(f"youtube_{t}", REAL8)}
        expected |= {f"{split}/fake_four/{n}" for m in MANIPS for n in frames(f"{m}_{t}_{src}", TWO)}
    assert tree(ws / "out/dfd/FaceForensics/2_frames/DS_FF++_all_cls/c23") == expected
    ext = ws / "data/FaceForensics/facial_images_split"
    assert tree(ext / "8_frames/original_sequences/youtube/c23") == {
        f"{split}/{n}" for split, (t, _) in FF_PAIRS.items() for n in frames(t, REAL8)}
    assert tree(ext / "2_frames/manipulated_sequences/DeepFakes/c23") == {
        f"{split}/{n}" for split, (t, src) in FF_PAIRS.items() for n in frames(f"{t}_{src}", TWO)}

    s = finetune(ws, "FF++_each")      # fakes were extracted by FF++_all: skipped, not redone
    assert (s.counts["done"], s.counts["skipped"]) == (3 * 2 + 4 * (3 * 2 + 3 * 2), 12 * 2)
    expected = set()
    for m in MANIPS:
        for split, (t, src) in FF_PAIRS.items():
            expected |= {f"{m}/{split}/real_youtube/{n}" for n in frames(f"youtube_{t}", TWO)}
            expected |= {f"{m}/{split}/fake_{m}/{n}" for n in frames(f"{m}_{t}_{src}", TWO)}
    assert tree(ws / "out/dfd/FaceForensics/2_frames/DS_FF++_each_cls/c23") == expected


def test_dfd(ws, clip):
    put(clip, ws / "data/FaceForensics", "original_sequences/actors/raw/videos/01__walk.mp4",
        "manipulated_sequences/DeepFakeDetection/raw/videos/01_02__walk__ABC.mp4")
    assert finetune(ws, "DFD").counts["done"] == 8
    assert tree(ws / "out/dfd/FaceForensics/2_frames/DS_DFD_binary_cls") == \
        {f"raw/test/real_actors/{n}" for n in frames("actors_01__walk", TWO)} | \
        {f"raw/test/fake_DeepFakeDetection/{n}" for n in frames("DeepFakeDetection_01_02__walk__ABC", TWO)}


@pytest.mark.parametrize("dataset,folder,with_youtube", [
    ("CelebDFv1", "Celeb-DF", True), ("CelebDFv2", "Celeb-DF-v2", False)])
def test_celeb_df_v1_v2(ws, clip, dataset, folder, with_youtube):
    root = ws / "data" / folder
    put(clip, root, "Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "YouTube-real/00000.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4")
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    finetune(ws, dataset)
    expected = {f"real/{n}" for n in frames("Celeb-real_id0_0000", TWO)} | \
               {f"fake/{n}" for n in frames("Celeb-synthesis_id0_id1_0000", TWO)}
    if with_youtube:
        expected |= {f"real/{n}" for n in frames("YouTube-real_00000", TWO)}
    assert tree(ws / "out/dfd" / folder / "2_frames/test") == expected


def test_celeb_df_plusplus(ws, clip):
    root = ws / "data/Celeb-DF++"
    put(clip, root, "Celeb-real/id0_0000.mp4", "Celeb-synthesis/FaceSwap/Method1/id0_id1_0000.mp4",
        "Celeb-synthesis/TalkingFace/M2/id3_0009.mp4")
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/FaceSwap/Method1/id0_id1_0000.mp4\n")
    finetune(ws, "CelebDF++")
    assert tree(ws / "out/dfd/Celeb-DF++/2_frames/test") == \
        {f"real/{n}" for n in frames("Celeb-real_id0_0000", TWO)} | \
        {f"fake/{n}" for n in frames("Celeb-synthesis_FaceSwap_Method1_id0_id1_0000", TWO)}


def test_dfdc_labels_csv(ws, clip):
    root = ws / "data/DFDC/test"
    put(clip, root, "ori_videos/dfdc_test_part_0/aaa.mp4", "ori_videos/dfdc_test_part_1/bbb.mp4",
        "ori_videos/dfdc_test_part_1/ccc.mp4")
    (root / "labels.csv").write_text("filename,label\naaa.mp4,0\nbbb.mp4,1\n")
    s = finetune(ws, "DFDC")
    assert (s.counts["done"], s.counts["excluded"]) == (4, 1)
    assert tree(ws / "out/dfd/DFDC/2_frames/test") == \
        {f"real/{n}" for n in frames("aaa", TWO)} | {f"fake/{n}" for n in frames("bbb", TWO)}


def test_dfdc_preview_dataset_json(ws, clip):
    root = ws / "data/DFDCP"
    meta = {"original_videos/123/123_A_001.mp4": {"set": "test", "label": "real"},
            "method_A/123/123_A/123_A_002.mp4": {"set": "test", "label": "fake"},
            "method_B/9/9_B/9_B_003.mp4": {"set": "train", "label": "fake"}}
    put(clip, root, *meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    finetune(ws, "DFDC_P")
    assert tree(ws / "out/dfd/DFDCP/2_frames/test") == \
        {f"real/{n}" for n in frames("original_videos_123_A_001", TWO)} | \
        {f"fake/{n}" for n in frames("method_A_123_A_002", TWO)}


def test_wild_deepfake_copies(ws):
    root = ws / "data/deepfake_in_the_wild"
    a = write_face_image(root / "fake_test/12/fake/3/0001.png")
    write_face_image(root / "real_test/5/real/1/0002.png")
    write_face_image(root / "real_test/5/real/1/0003.jpg")             # not a .png: not copied
    finetune(ws, "WildDeepfake")
    out = ws / "out/dfd/deepfake_in_the_wild/test"
    assert tree(out) == {"fake/fake_test_12_fake_3_frame_0001.png", "real/real_test_5_real_1_frame_0002.png"}
    assert (out / "fake/fake_test_12_fake_3_frame_0001.png").read_bytes() == a.read_bytes()


def test_diff_test_and_val_subsets(ws):
    root = ws / "data/DiFF"
    for rel in ("test/FS/Roop/a/0001.jpg", "test/FE/x/0002.png", "test/I2I/y/0003.jpg", "test/T2I/z/0004.png",
                "val/FS/Roop/b/0005.jpg", "DiFF_real/test/r1.jpg", "DiFF_real/val/r2.png"):
        write_face_image(root / rel)
    (root / "test/FS/notes.txt").write_text("not an image")
    s = finetune(ws, "DiFF")
    assert (s.counts["done"], s.counts["error"]) == (7, 0)             # each real image cropped once
    subsets = ("FS", "FE", "I2I", "T2I")
    expected = {"test_subsets/FS/test/fake/_Roop_a_0001.png", "test_subsets/FE/test/fake/_x_0002.png",
                "test_subsets/I2I/test/fake/_y_0003.png", "test_subsets/T2I/test/fake/_z_0004.png",
                "val_subsets/FS/val/fake/_Roop_b_0005.png"}
    expected |= {f"test_subsets/{s}/test/real/r1.jpg" for s in subsets}
    expected |= {f"val_subsets/{s}/val/real/r2.png" for s in subsets}
    assert tree(ws / "out/diff/DiFF") == expected


@pytest.mark.slow
def test_pretrain_vf2_ytf_ff_and_parse(ws, clip):
    for rel in ("VGG-Face2/train/n000002/0001_01.jpg", "VGG-Face2/test/n000003/0002_01.jpg",
                "YoutubeFace/frame_images_DB/Aaron_Eckhart/0/0.555.jpg"):
        write_face_image(ws / "data" / rel)
    make_ff(ws, clip)
    args = ["--config", str(ws / "cfg/pretrain.yaml"), "--workers", "2", "--log_dir", str(ws / "logs")]
    for ds in ("VF2", "YTF", "FF++_o"):
        main_dataset_preprocess(PRETRAIN_DEFAULT, "pretrain", ["--dataset", ds, *args])
    assert tree(ws / "data/VGG-Face2/facial_images") == {"train_n000002_0001_01.jpg", "test_n000003_0002_01.jpg"}
    assert tree(ws / "data/YoutubeFace/facial_images") == {"Aaron_Eckhart_0_0.555.jpg"}
    assert tree(ws / "data/FaceForensics/facial_images_split/3_frames/original_sequences/youtube/c23") == {
        f"{split}/{n}" for split, (t, _) in FF_PAIRS.items() for n in frames(t, [0, 4, 9])}

    s = main_face_parse(PRETRAIN_DEFAULT, ["--dataset", "FF++_o", "--backend", "landmarks", *args])
    stems = {f"{t}_frame_{i}" for split, (t, _) in FF_PAIRS.items() if split != "test" for i in (0, 4, 9)}
    assert s.counts["done"] == 6
    assert tree(ws / "out/pretrain/FaceForensics_youtube/3_frames/c23") == \
        {f"images/{x}.png" for x in stems} | {f"parsing_maps/{x}.npy" for x in stems}
