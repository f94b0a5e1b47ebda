"""DfD / DiFF data sets: ``--dataset {FF++_all,FF++_each,DFD,CelebDFv1,CelebDFv2,CelebDF++,DFDC,DFDC_P,
WildDeepfake,DiFF,custom}``.

    python datasets/finetune/preprocess/dataset_preprocess.py --dataset FF++_all --workers 8
"""
from pathlib import Path

from fsvfm.preprocess.cli import main_dataset_preprocess

if __name__ == "__main__":
    main_dataset_preprocess(Path(__file__).resolve().parent / "config" / "default.py", "finetune")
