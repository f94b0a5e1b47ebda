"""Unseen diffusion-face (DiFF) test (spec 5): image-level metrics on the table below.

    python fsvfm/main_test_DiFF.py --resume FT_DIR/checkpoint-min_val_loss.pth --output_dir FT_DIR/experiments_test
"""
from __future__ import annotations

from fsvfm.testing import TestSet, cli

_DIFF = "diffusion_facial_forgery_detection/DiFF"
DIFF_TEST_SETS = (
    TestSet("FF_DF", "deepfakes_detection/FaceForensics/32_frames/DS_FF++_each_cls/c23/DeepFakes"),
    *(TestSet(f"DiFF_{s}", f"{_DIFF}/test_subsets/{s}") for s in ("T2I", "I2I", "FS", "FE")),
    *(TestSet(f"DiFF_{s}_val", f"{_DIFF}/val_subsets/{s}", split="val") for s in ("T2I", "I2I", "FS", "FE")),
)

if __name__ == "__main__":
    cli(DIFF_TEST_SETS, "image", "FS-VFM unseen diffusion-face (DiFF) test")
