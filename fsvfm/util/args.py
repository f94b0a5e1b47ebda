"""Argparse parent groups shared by every entry point (original flag names kept)."""
from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from fsvfm.util.misc import AMP_CHOICES


def distributed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device and distributed")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--amp", default=None, choices=AMP_CHOICES,
                   help="mixed precision (default: none on CPU; on CUDA fp16, but bf16 for pre-training "
                        "where the card supports it)")
    g.add_argument("--seed", default=0, type=int, help="seed; each rank uses seed + rank")
    g.add_argument("--world_size", default=1, type=int, help="set by the launcher")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", default=-1, type=int,
                   help="set by torch.distributed.launch (both spellings accepted)")
    g.add_argument("--dist_on_itp", action="store_true", help="read ranks from OpenMPI variables")
    g.add_argument("--dist_url", default="env://", help="process-group init URL")
    return p


def optimization_parser(epochs: int, warmup_epochs: int, min_lr: float, blr: float = 1e-3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", default=64, type=int, help="batch size per process")
    g.add_argument("--epochs", default=epochs, type=int)
    g.add_argument("--accum_iter", default=1, type=int, help="gradient accumulation steps")
    g.add_argument("--weight_decay", default=0.05, type=float)
    g.add_argument("--lr", default=None, type=float, help="absolute lr (default: blr * eff. batch / 256)")
    g.add_argument("--blr", default=blr, type=float, help="base lr")
    g.add_argument("--min_lr", default=min_lr, type=float)
    g.add_argument("--warmup_epochs", default=warmup_epochs, type=int)
    return p


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run, outputs and resume")
    g.add_argument("--output_dir", default="", help="output folder (default under ./checkpoint/$USER)")
    g.add_argument("--log_dir", default="", help="ignored: logs always go to --output_dir")
    g.add_argument("--resume", default="", help="checkpoint to resume from")
    g.add_argument("--auto_resume", action="store_true", help="resume from the newest checkpoint in --output_dir")
    g.add_argument("--start_epoch", default=0, type=int)
    g.add_argument("--save_freq", default=20, type=int, help="save every N epochs (and the last)")
    g.add_argument("--num_workers", default=10, type=int)
    g.add_argument("--pin_mem", action="store_true", default=True)
    g.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    return p


def input_parser(model: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and input")
    g.add_argument("--model", default=model, help="model factory name")
    g.add_argument("--input_size", default=224, type=int)
    g.add_argument("--normalize_from_IMN", action="store_true", help="ImageNet mean/std instead of the data set's")
    g.add_argument("--apply_simple_augment", action="store_true")
    return p


def default_output_dir(args: argparse.Namespace, kind: str) -> None:
    """Fill ``args.output_dir`` when empty (``./checkpoint/$USER/experiments_{kind}/{pid}``); log_dir = output_dir."""
    if not args.output_dir:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "user"
        args.output_dir = str(Path("checkpoint") / user / f"experiments_{kind}" / str(os.getpgid(0)))
    args.log_dir = args.output_dir


def set_effective_lr(args: argparse.Namespace, world_size: int) -> int:
    """``lr = blr * batch_size * accum_iter * world_size / 256`` unless ``--lr``; returns the effective batch."""
    eff_batch = args.batch_size * args.accum_iter * world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    return eff_batch
