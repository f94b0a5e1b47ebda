"""Defaults of the pre-training preprocessing.

Relative paths are relative to ``datasets/pretrain/preprocess/`` (the folder above this file),
whatever the working directory. ``DERIVED`` keys follow their base keys when those are changed.
"""
from yacs.config import CfgNode as CN

from fsvfm.preprocess.config import under, with_derived
from fsvfm.preprocess.layouts import frames_folder

_C = CN()
_C.face_scale = 1.3
_C.face_size = 224
_C.img_format = ".png"

_C.VGGFace2_path = ["../../data/VGG-Face2/train", "../../data/VGG-Face2/test"]
_C.VGGFace2_face_ds = "../../data/VGG-Face2/facial_images/"

_C.FF_train_split = "../../data/FaceForensics/dataset/splits/train.json"
_C.FF_val_split = "../../data/FaceForensics/dataset/splits/val.json"
_C.FF_test_split = "../../data/FaceForensics/dataset/splits/test.json"
_C.FF_real_path = "../../data/FaceForensics/original_sequences/youtube/"
_C.FF_split_face_ds = "../../data/FaceForensics/facial_images_split/"
_C.FF_compression = "c23"   # also 'raw', 'c40'
_C.FF_num_frames = 128      # int, or None (--opts FF_num_frames None) for all frames

_C.YTFace_path = ["../../data/YoutubeFace/frame_images_DB/"]
_C.YTFace_face_ds = "../../data/YoutubeFace/facial_images/"

_C.face_img_dir = "images"
_C.pm_format = ".npy"
_C.face_pm_dir = "parsing_maps"
_C.save_vis_ps = False
_C.vis_pm_dir = "vis_parsing_maps"

_C.pretrain_data_path = "../../pretrain_datasets/"


def _ff_real_faces(c) -> list:
    base = f"{c.FF_split_face_ds}{frames_folder(c.FF_num_frames)}/original_sequences/youtube/{c.FF_compression}/"
    return [base + "train/", base + "val/"]


DERIVED = {
    "VGGFace2_path_for_parsing": ("VGGFace2_face_ds", lambda c: c.VGGFace2_face_ds),
    "VGGFace2_parse_ds_path": under("pretrain_data_path", "VGG-Face2/"),
    "FF_real_face_paths_for_parsing": ("FF_split_face_ds", _ff_real_faces),
    "FF_face_parse_ds_path": ("pretrain_data_path", lambda c: f"{c.pretrain_data_path}FaceForensics_youtube/"
                                                              f"{frames_folder(c.FF_num_frames)}/{c.FF_compression}"),
    "YTFace_path_for_parsing": ("YTFace_face_ds", lambda c: c.YTFace_face_ds),
    "YTFace_parse_ds_path": under("pretrain_data_path", "YoutubeFace/"),
}
cfg = with_derived(_C, DERIVED)
