"""Face parsing -> pre-training data set ``images/`` + ``parsing_maps/``.

    python datasets/pretrain/preprocess/face_parse.py --dataset VF2
    python datasets/pretrain/preprocess/face_parse.py --dataset custom --src PHOTOS --dst OUT --crop
"""
from pathlib import Path

from fsvfm.preprocess.cli import main_face_parse

if __name__ == "__main__":
    main_face_parse(Path(__file__).resolve().parent / "config" / "default.py")
