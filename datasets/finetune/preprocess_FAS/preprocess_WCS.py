"""WCS face anti-spoofing frames: ``--dataset {all,cefa,wmca,surf}``.

    python datasets/finetune/preprocess_FAS/preprocess_WCS.py --workers 8
"""
from pathlib import Path

from fsvfm.preprocess.cli import main_fas_preprocess

if __name__ == "__main__":
    main_fas_preprocess(Path(__file__).resolve().parent / "config" / "default.py", "WCS")
