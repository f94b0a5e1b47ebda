"""yacs config loading (paths relative to where they were written, derived keys), augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from fsvfm.preprocess.augment import make_variants
from fsvfm.preprocess.config import load_config
from fsvfm.preprocess.faces import FaceCropper
from tests.helpers import FINETUNE_DEFAULT, PRETRAIN_DEFAULT, REPO, astronaut_bgr


def test_defaults_resolve_against_the_script_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                       # the working directory must not matter
    cfg = load_config(PRETRAIN_DEFAULT)
    data = REPO / "datasets" / "data"
    assert cfg.VGGFace2_path == [str(data / "VGG-Face2/train"), str(data / "VGG-Face2/test")]
    assert cfg.YTFace_path == [str(data / "YoutubeFace/frame_images_DB") + "/"]   # trailing / kept
    assert cfg.FF_real_face_paths_for_parsing == [
        str(data / f"FaceForensics/facial_images_split/128_frames/original_sequences/youtube/c23/{s}") + "/"
        for s in ("train", "val")]
    assert cfg.FF_face_parse_ds_path == str(REPO / "datasets/pretrain_datasets/FaceForensics_youtube/128_frames/c23")
    assert (cfg.face_scale, cfg.face_size, cfg.img_format, cfg.FF_num_frames) == (1.3, 224, ".png", 128)
    ft = load_config(FINETUNE_DEFAULT)
    assert ft.FF_all_binary_cls_ds == str(REPO / "datasets/finetune_datasets/deepfakes_detection/FaceForensics/"
                                          "32_frames/DS_FF++_all_cls") + "/"
    assert ft.DiFF_split_face_ds == str(REPO / "datasets/finetune_datasets/diffusion_facial_forgery_detection/DiFF") + "/"
    assert ft.FF_manipulation_list == ["DeepFakes", "Face2Face", "FaceSwap", "NeuralTextures"]


def test_config_file_and_opts(monkeypatch, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "my.yaml").write_text("finetune_data_path_dfd: ../out/\nFF_compression: c40\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(FINETUNE_DEFAULT, tmp_path / "c" / "my.yaml",
                      ["FF_num_frames", "8", "DFDC_path", "dfdc/", "DFD_num_frames", "all"])
    assert cfg.FF_compression == "c40" and cfg.FF_num_frames == 8 and cfg.DFD_num_frames is None
    # derived keys follow their base key's value and folder
    assert cfg.FF_all_binary_cls_ds == str(tmp_path / "out/FaceForensics/8_frames/DS_FF++_all_cls") + "/"
    assert cfg.DFD_binary_cls_ds == str(tmp_path / "out/FaceForensics/all_frames/DS_DFD_binary_cls") + "/"
    assert cfg.CelebDFv2_split_face_ds == str(tmp_path / "out/Celeb-DF-v2") + "/"
    assert cfg.DFDC_path == str(tmp_path / "dfdc") + "/"                           # --opts: cwd
    with pytest.raises(KeyError):
        load_config(FINETUNE_DEFAULT, opts=["no_such_key", "1"])


def test_unknown_keys_are_named_together_with_the_closest_known_key(tmp_path):
    with pytest.raises(KeyError) as e:
        load_config(FINETUNE_DEFAULT, opts=["FF_num_frame", "8", "no_such_key", "1", "FF_compression", "c40"])
    assert e.value.args[0] == ("unknown config key(s) in --opts: 'FF_num_frame' (did you mean 'FF_num_frames'?), "
                               f"'no_such_key'; the known keys are in {FINETUNE_DEFAULT.resolve()}")
    (tmp_path / "my.yaml").write_text("FF_compresion: c40\nDFDC_path: x/\n")
    with pytest.raises(KeyError) as e:
        load_config(FINETUNE_DEFAULT, tmp_path / "my.yaml")
    assert e.value.args[0].startswith(f"unknown config key(s) in --config {tmp_path / 'my.yaml'}: "
                                      "'FF_compresion' (did you mean 'FF_compression'?); ")


def test_make_variants_varied_reproducible_and_still_faces():
    img = np.ascontiguousarray(astronaut_bgr()[:, :, ::-1])
    a, b = make_variants(img, 4, seed=3), make_variants(img, 4, seed=3)
    assert len(a) == 4 and all(v.shape == img.shape and v.dtype == np.uint8 for v in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.abs(v.astype(int) - img).mean() > 5 for v in a)
    assert len({v.tobytes() for v in a}) == 4
    cropper = FaceCropper()
    assert sum(cropper.crop(np.ascontiguousarray(v[:, :, ::-1])) is not None for v in a) >= 3
