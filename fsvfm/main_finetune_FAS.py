"""Cross-domain face anti-spoofing: leave-one-out fine-tuning of a pre-trained FS-VFM encoder on
the MCIO / WCS protocols, tested on the held-out domain (HTER, AUC, TPR@FPR=1%).

    python fsvfm/main_finetune_FAS.py --config M --model vit_base_patch16 \
        --pt_model checkpoint/pretrained_models/FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth \
        --lr 2.5e-5 --wd 1e-6 --op_dir OUT/OCI2M --report_logger_path OUT/OCI2M/performance.csv

``--model vit_*_fs_adapter --trainable_modules fs-adapter`` trains the FS-Adapter instead (3 runs, 24 frames
per source and class by default). Class indices: spoof 0, live 1; scores are P(live). The task entry is
``fsvfm.tasks.fas.FAS_TASK``; the loop is the one fine-tuning runner, ``fsvfm.finetune_runner``. Rerunning
the same command continues an interrupted experiment (finished runs are kept). A usage mistake (missing list file or frame,
empty domain, bad ``--pt_model``) ends with one ``error:`` line and exit code 2 (``util.cli.run_cli``).
"""
from __future__ import annotations

from fsvfm import finetune_runner
from fsvfm.tasks.fas import FAS_TASK

TASK = FAS_TASK

# main(args) runs --runs runs and returns {'runs', 'mean', 'std', 'output_dir'}
get_args_parser, main, cli = finetune_runner.entry_points(TASK)

if __name__ == "__main__":
    cli()
