"""Unseen diffusion-face (DiFF) test: image-level metrics on the test-set table of
``fsvfm.tasks.dfd.DIFF_TASK``.

    python fsvfm/main_test_DiFF.py --resume FT_DIR/checkpoint-min_val_loss.pth --output_dir FT_DIR/experiments_test
"""
from __future__ import annotations

import argparse

from fsvfm import evaluation
from fsvfm.finetune_runner import chosen_task
from fsvfm.tasks.dfd import DIFF_TASK, DIFF_TEST_SETS
from fsvfm.util.cli import run_cli

__all__ = ["DIFF_TASK", "DIFF_TEST_SETS", "get_args_parser", "main"]
TASK = DIFF_TASK
ALSO = ()


def get_args_parser() -> argparse.ArgumentParser:
    return evaluation.test_parser(TASK, ALSO)


def main(args: argparse.Namespace) -> dict:
    """Test ``--resume``; returns the ``test_results.json`` content. Never calls ``exit``."""
    return evaluation.run(args, chosen_task(args, TASK))


def cli(argv: list[str] | None = None) -> dict:
    """``main`` behind the command-line boundary: a user mistake prints one ``error:`` line, exit code 2."""
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    cli()
