"""Cross-domain face anti-spoofing test: any FAS checkpoint (ours, or a released ``.pth.tar``) on a target
domain's test lists, without training. The video-level HTER / AUC / TPR@FPR=1% at the EER threshold of the
target videos, and the HTER at the EER threshold of the training sources' test lists, as fine-tuning reports
them; ``--report_logger_path`` (default ``{output_dir}/performance.csv``) has fine-tuning's CSV layout.

    python fsvfm/main_test_FAS.py --resume OUT/OCI2M/msu_vit_0_shot_checkpoint_run_0.pth.tar --config M \\
        --fas_data_root datasets/finetune_datasets/face_anti_spoofing/data --output_dir OUT/OCI2M/test

Outputs as the other test programs (``test_results.txt``/``.json``, ``scores_{target}.csv`` per video,
``scores_{target}_frames.csv``, ``roc_{target}.png``). A usage mistake ends with one ``error:`` line, exit 2.
"""
from __future__ import annotations

import argparse

from fsvfm import evaluation
from fsvfm.tasks.fas import FAS_TASK
from fsvfm.util.cli import run_cli

TASK = FAS_TASK


def get_args_parser() -> argparse.ArgumentParser:
    return evaluation.test_parser(TASK)


def main(args: argparse.Namespace) -> dict:
    """Test ``--resume``; returns the ``test_results.json`` content. Never calls ``exit``."""
    return evaluation.run(args, TASK)


def cli(argv: list[str] | None = None) -> dict:
    """``main`` behind the command-line boundary: a user mistake prints one ``error:`` line, exit code 2."""
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    cli()
