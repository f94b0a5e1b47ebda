"""Defaults of the FAS preprocessing.

Relative paths are relative to ``datasets/finetune/preprocess_FAS/`` (the folder above this file),
whatever the working directory. ``DERIVED`` keys follow ``finetune_data_path_fas`` when it is changed.
"""
from yacs.config import CfgNode as CN

from fsvfm.preprocess.config import under, with_derived

_C = CN()
_C.face_scale = 1.3          # unused by the aligned chips; kept for the original's key set
_C.face_size = 224           # chip size
_C.img_format = ".png"
_C.chip_padding = 0.37       # padding of the mean face shape (extract_image_chips(..., 224, 0.37))
_C.write_dev = True          # write Replay devel / OULU Dev_files videos to dev/ (D22)

_C.CelebA_Spoof_path = "../../data/CelebA_Spoof/CelebA_Spoof/Data/train/"
_C.msu_path = "../../data/MSU-MFSD/"
_C.casia_path = "../../data/CASIA_faceAntisp/"
_C.replay_path = "../../data/Replay/"
_C.oulu_path = "../../data/OULU-NPU/"
_C.cefa_path = "../../data/CeFA-WACV2021/CeFA-Race/CeFA-Race"
_C.wmca_path = "../../data/WMCA/WMCA/preprocessed-face-station_RGB"
_C.surf_path = "../../data/CASIA-SURF-Challenge"
_C.finetune_data_path_fas = "../../finetune_datasets/face_anti_spoofing/data"


def _fas(sub: str):
    return under("finetune_data_path_fas", sub)


DERIVED = {
    "celeb_split_face_ds": _fas("/MCIO/frame/celeb"),
    "msu_split_face_ds": _fas("/MCIO/frame/msu"),
    "casia_split_face_ds": _fas("/MCIO/frame/casia"),
    "replay_split_face_ds": _fas("/MCIO/frame/replay"),
    "oulu_split_face_ds": _fas("/MCIO/frame/oulu"),
    "WCS_frame_path": _fas("/WCS/frame"),
    "WCS_txt_label": _fas("/WCS/txt"),
}
cfg = with_derived(_C, DERIVED)
