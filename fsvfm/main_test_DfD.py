"""Cross-dataset deepfake-detection test (spec 5): frame- and video-level metrics on the table below.

    python fsvfm/main_test_DfD.py --resume FT_DIR/checkpoint-min_val_loss.pth --output_dir FT_DIR/experiments_test
"""
from __future__ import annotations

from fsvfm.testing import TestSet, cli

_FF = "deepfakes_detection/FaceForensics/32_frames"
DFD_TEST_SETS = (
    TestSet("DFD", f"{_FF}/DS_DFD_binary_cls/raw"),
    TestSet("Celeb-DF-v1", "deepfakes_detection/Celeb-DF/32_frames"),
    TestSet("Celeb-DF-v2", "deepfakes_detection/Celeb-DF-v2/32_frames"),
    TestSet("DFDC", "deepfakes_detection/DFDC/32_frames"),
    TestSet("DFDCP", "deepfakes_detection/DFDCP/32_frames"),
    TestSet("WDF", "deepfakes_detection/deepfake_in_the_wild"),
    TestSet("Celeb-DF++", "deepfakes_detection/Celeb-DF++/32_frames"),
    TestSet("FF++_c23", f"{_FF}/DS_FF++_all_cls/c23", in_default=False),  # intra-dataset, on request
)

if __name__ == "__main__":
    cli(DFD_TEST_SETS, "video", "FS-VFM cross-dataset deepfake detection test")
