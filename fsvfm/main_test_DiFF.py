"""Unseen diffusion-face (DiFF) test: image-level metrics on the test-set table of
``fsvfm.tasks.dfd.DIFF_TASK``.

    python fsvfm/main_test_DiFF.py --resume FT_DIR/checkpoint-min_val_loss.pth --output_dir FT_DIR/experiments_test
"""
from __future__ import annotations

from fsvfm import evaluation
from fsvfm.tasks.dfd import DIFF_TASK, DIFF_TEST_SETS

__all__ = ["DIFF_TASK", "DIFF_TEST_SETS", "cli", "get_args_parser", "main"]
TASK = DIFF_TASK

get_args_parser, main, cli = evaluation.entry_points(TASK)

if __name__ == "__main__":
    cli()
