"""Full fine-tuning of a pre-trained FS-VFM encoder for deepfake (DfD) and diffusion-face (DiFF)
detection. DfD and DiFF differ only in the training folder.

    torchrun --nproc_per_node=2 fsvfm/main_finetune_DfD.py --finetune PRETRAIN.pth \
        --finetune_data_path DATA_DIR --apply_simple_augment --mixup 0.8 --cutmix 1.0 --dist_eval ...

Class indices: fake 0, real 1 (folders are labelled by name); scores are P(real). The task entry
is ``fsvfm.tasks.dfd.DFD_TASK``; the loop is ``fsvfm.finetune_runner``. ``--task Unified --classes
real,deepfake,diffusion,spoof`` fine-tunes an N-class detector from class folders instead
(``fsvfm.tasks.dfd.UNIFIED_TASK``; docs/FINETUNE.md "N-class detectors").
"""
from __future__ import annotations

from fsvfm import finetune_runner
from fsvfm.tasks.dfd import DFD_TASK, UNIFIED_TASK

TASK = DFD_TASK
ALSO = (UNIFIED_TASK,)  # --task Unified: an N-class detector from class folders (--classes)

# main(args) returns {'min_val_loss', 'last_val', 'output_dir'}
get_args_parser, main, cli = finetune_runner.entry_points(TASK, ALSO)

if __name__ == "__main__":
    cli()
