"""FS-VFM self-supervised pre-training.

    python fsvfm/main_pretrain.py --pretrain_data_path DATA ...            # one process
    torchrun --nproc_per_node=N fsvfm/main_pretrain.py ...                  # DDP (NCCL / gloo on CPU)
    python -m torch.distributed.launch --nproc_per_node=N fsvfm/main_pretrain.py ...
    python -m fsvfm.main_pretrain ...

The run (networks, data, resume, epoch loop, checkpoint pairs) is ``fsvfm.pretrain_runner``. User mistakes
end with one line and exit code 2 (``util.cli.run_cli``).
"""
from __future__ import annotations

import argparse

from fsvfm.data.device import add_loader_args
from fsvfm.data.pretrain import require_roots
from fsvfm.losses import CL_LOSSES
from fsvfm.pretrain_runner import train
from fsvfm.util.accel import add_speed_args
from fsvfm.util.args import distributed_parser, input_parser, optimization_parser, run_parser
from fsvfm.util.cli import entry_cli
from fsvfm.util.startup import start_run


def get_args_parser() -> argparse.ArgumentParser:
    parents = [input_parser("fsfm_vit_base_patch16"),
               optimization_parser(epochs=400, warmup_epochs=40, min_lr=0.0, blr=1e-3),
               run_parser(print_freq=20), distributed_parser()]
    parser = argparse.ArgumentParser("FS-VFM pre-training", parents=parents)
    g = parser.add_argument_group("pre-training")
    g.add_argument("--patch_size", default=None, type=int,
                   help="patch size of the CRFR-P masks (default: the model's, 16; 14 for huge)")
    g.add_argument("--mask_ratio", default=0.75, type=float, help="fraction of patches masked")
    g.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalised pixel targets")
    g.add_argument("--weight_sfr", default=0.007, type=float, help="weight of the facial-region loss")
    g.add_argument("--cl_loss", default="SimSiam", choices=CL_LOSSES, help="contrastive loss")
    g.add_argument("--cl_sample", default="all", choices=("all", "positive"), help="InfoNCE logits")
    g.add_argument("--weight_cl", default=0.1, type=float, help="weight of the contrastive loss")
    g.add_argument("--t_momentum", default=0.996, type=float, help="initial EMA momentum of the target")
    g.add_argument("--ema_mode", default="update", choices=("update", "frozen"),
                   help="update: the target follows the online network by EMA; frozen: the "
                        "target keeps its initial weights, as under the original's launch (DEVIATIONS.md P1)")
    g.add_argument("--clip_grad", default=1.0, type=float, help="global gradient-norm clip on update steps")
    g.add_argument("--pretrain_data_path", dest="data_path", action="append", default=None,
                   help="data root with images/ and parsing_maps/ (repeat for several data sets)")
    g.add_argument("--resume_target_network", default="",
                   help="target checkpoint for --resume (default: the checkpoint-te-* next to it)")
    g.add_argument("--vis_freq", default=20, type=int,
                   help="every N epochs a TensorBoard image grid of fixed faces: input, CRFR-P mask, "
                        "reconstruction (0 = off)")
    g.add_argument("--model_kwargs", "--model_overrides", dest="model_kwargs", default="",
                   help='JSON dict of model constructor overrides, e.g. \'{"depth": 2}\' (tests, ablations; '
                        "--model_overrides is the former name)")
    speed = parser.add_argument_group("speed")
    add_speed_args(speed)
    add_loader_args(speed)
    return parser


def main(args: argparse.Namespace) -> dict[str, float]:
    """Run pre-training; returns the last epoch's statistics."""
    require_roots(args.data_path)  # before the output folder is made
    return start_run(args, "pretrain", train)


cli = entry_cli(main, get_args_parser)


if __name__ == "__main__":
    cli()
