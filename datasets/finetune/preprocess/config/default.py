"""Defaults of the DfD / DiFF preprocessing.

Relative paths are relative to ``datasets/finetune/preprocess/`` (the folder above this file),
whatever the working directory. ``DERIVED`` keys follow their base keys when those are changed.
"""
from yacs.config import CfgNode as CN

from fsvfm.preprocess.config import under, with_derived
from fsvfm.preprocess.layouts import frames_folder

_C = CN()
_C.face_scale = 1.3
_C.face_size = 224
_C.img_format = ".png"

_C.finetune_data_path_dfd = "../../finetune_datasets/deepfakes_detection/"
_C.FF_train_split = "../../data/FaceForensics/dataset/splits/train.json"
_C.FF_val_split = "../../data/FaceForensics/dataset/splits/val.json"
_C.FF_test_split = "../../data/FaceForensics/dataset/splits/test.json"
_C.FF_real_path = "../../data/FaceForensics/original_sequences/youtube/"
_C.FF_fake_path = "../../data/FaceForensics/manipulated_sequences/"
_C.FF_manipulation_list = ["DeepFakes", "Face2Face", "FaceSwap", "NeuralTextures"]
_C.FF_split_face_ds = "../../data/FaceForensics/facial_images_split/"
_C.FF_compression = "c23"
_C.FF_num_frames = 32

_C.DFD_real = "../../data/FaceForensics/original_sequences/actors/"
_C.DFD_fake = "../../data/FaceForensics/manipulated_sequences/DeepFakeDetection/"
_C.DFD_split_face_ds = "../../data/FaceForensics/facial_images_split/"
_C.DFD_compression = "raw"
_C.DFD_num_frames = 32

_C.CelebDFv1_path = "../../data/Celeb-DF/"
_C.CelebDFv1_num_frames = 32
_C.CelebDFv2_path = "../../data/Celeb-DF-v2/"
_C.CelebDFv2_num_frames = 32
_C.CelebDF_plusplus_path = "../../data/Celeb-DF++/"
_C.CelebDF_plusplus_num_frames = 32
_C.DFDC_path = "../../data/DFDC/test/"
_C.DFDC_num_frames = 32
_C.DFDC_P_path = "../../data/DFDCP/"
_C.DFDC_P_num_frames = 32
_C.DFIW_path = "../../data/deepfake_in_the_wild/"

_C.finetune_data_path_diff = "../../finetune_datasets/diffusion_facial_forgery_detection/"
_C.DiFF_path = "../../data/DiFF/"


def _dfd(sub: str):
    return under("finetune_data_path_dfd", sub)


DERIVED = {
    "FF_all_binary_cls_ds": ("finetune_data_path_dfd", lambda c: f"{c.finetune_data_path_dfd}FaceForensics/"
                                                                 f"{frames_folder(c.FF_num_frames)}/DS_FF++_all_cls/"),
    "FF_each_binary_cls_ds": ("finetune_data_path_dfd", lambda c: f"{c.finetune_data_path_dfd}FaceForensics/"
                                                                  f"{frames_folder(c.FF_num_frames)}/DS_FF++_each_cls/"),
    "DFD_binary_cls_ds": ("finetune_data_path_dfd", lambda c: f"{c.finetune_data_path_dfd}FaceForensics/"
                                                              f"{frames_folder(c.DFD_num_frames)}/DS_DFD_binary_cls/"),
    "CelebDFv1_split_face_ds": _dfd("Celeb-DF/"),
    "CelebDFv2_split_face_ds": _dfd("Celeb-DF-v2/"),
    "CelebDF_plusplus_split_face_ds": _dfd("Celeb-DF++/"),
    "DFDC_split_face_ds": _dfd("DFDC/"),
    "DFDC_P_split_face_ds": _dfd("DFDCP/"),
    "DFIW_split_face_ds": _dfd("deepfake_in_the_wild/"),
    "DiFF_real_path": under("DiFF_path", "DiFF_real/"),
    "DiFF_split_face_ds": under("finetune_data_path_diff", "DiFF/"),
}
cfg = with_derived(_C, DERIVED)
