"""MCIO face anti-spoofing chips: ``--dataset {all,replay,msu,oulu,casia,celeb,custom}``.

    python datasets/finetune/preprocess_FAS/preprocess_MCIO.py --workers 8
    python datasets/finetune/preprocess_FAS/preprocess_MCIO.py --dataset custom --src my_media --dst chips
"""
from pathlib import Path

from fsvfm.preprocess.cli import main_fas_preprocess

if __name__ == "__main__":
    main_fas_preprocess(Path(__file__).resolve().parent / "config" / "default.py", "MCIO")
