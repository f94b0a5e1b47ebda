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

from fsvfm import evaluation
from fsvfm.tasks.fas import FAS_TASK

TASK = FAS_TASK

get_args_parser, main, cli = evaluation.entry_points(TASK)

if __name__ == "__main__":
    cli()
