"""Cross-dataset deepfake-detection test: frame- and video-level metrics on the test-set
table of ``fsvfm.tasks.dfd.DFD_TASK``.

    python fsvfm/main_test_DfD.py --resume FT_DIR/checkpoint-min_val_loss.pth --output_dir FT_DIR/experiments_test
    python fsvfm/main_test_DfD.py --task Unified --resume FT_DIR/checkpoint-min_val_loss.pth --test_root DATA
"""
from __future__ import annotations

from fsvfm import evaluation
from fsvfm.tasks.dfd import DFD_TASK, DFD_TEST_SETS, UNIFIED_TASK

__all__ = ["DFD_TASK", "DFD_TEST_SETS", "cli", "get_args_parser", "main"]
TASK = DFD_TASK
ALSO = (UNIFIED_TASK,)  # --task Unified: N-class metrics on {--test_root}/test

get_args_parser, main, cli = evaluation.entry_points(TASK, ALSO)

if __name__ == "__main__":
    cli()
