"""Face crops for pre-training: ``--dataset {VF2,YTF,FF++_o,custom}``.

    python datasets/pretrain/preprocess/dataset_preprocess.py --dataset FF++_o --workers 8
    python datasets/pretrain/preprocess/dataset_preprocess.py --dataset custom --src DIR --dst DIR
"""
from pathlib import Path

from fsvfm.preprocess.cli import main_dataset_preprocess

if __name__ == "__main__":
    main_dataset_preprocess(Path(__file__).resolve().parent / "config" / "default.py", "pretrain")
