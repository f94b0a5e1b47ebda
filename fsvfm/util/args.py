"""Argparse parent groups shared by every entry point (original flag names kept)."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
from pathlib import Path
from typing import Any

from fsvfm.util.amp import AMP_CHOICES
from fsvfm.util.errors import UsageError

logger = logging.getLogger(__name__)
# below this an lr scaled down from --blr by a small CPU batch leaves the weights almost where they started
TINY_LR = 1e-5


def distributed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device and distributed")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--amp", default=None, choices=AMP_CHOICES,
                   help="mixed precision (default: none on CPU; on CUDA fp16, but bf16 for pre-training "
                        "where the card supports it)")
    g.add_argument("--seed", default=0, type=int, help="seed; each rank uses seed + rank")
    g.add_argument("--world_size", default=None, type=int,
                   help="expected number of processes (checked against the launcher's; default: the launcher's)")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", default=-1, type=int,
                   help="set by torch.distributed.launch (both spellings accepted)")
    g.add_argument("--dist_on_itp", action="store_true", help="read ranks from OpenMPI variables")
    g.add_argument("--dist_url", default="env://", help="process-group init URL")
    g.add_argument("--dist_timeout", type=float, default=None,
                   help="minutes a collective may wait (default $FSVFM_DIST_TIMEOUT or 30)")
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


def run_parser(print_freq: int = 100) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run, outputs and resume")
    g.add_argument("--output_dir", default="", help="output folder (default under ./checkpoint/$USER)")
    g.add_argument("--log_dir", default="", help="TensorBoard event folder (default: --output_dir)")
    g.add_argument("--print_freq", default=print_freq, type=int, help="progress line every N iterations")
    g.add_argument("--resume", default="", help="checkpoint to resume from")
    g.add_argument("--auto_resume", action="store_true", help="resume from the newest checkpoint in --output_dir")
    g.add_argument("--start_epoch", default=0, type=int)
    g.add_argument("--save_freq", default=20, type=int, help="save every N epochs (and the last)")
    g.add_argument("--num_workers", default=10, type=int)
    g.add_argument("--pin_mem", action="store_true", default=True)
    g.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    return p


def input_parser(model: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and input")
    g.add_argument("--model", default=model, help="model factory name")
    g.add_argument("--input_size", default=224, type=int)
    g.add_argument("--normalize_from_IMN", action="store_true", help="ImageNet mean/std instead of the data set's")
    g.add_argument("--apply_simple_augment", action="store_true")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action="store_true",
                   help="evaluate only (the fine-tuning program points to main_test_DfD.py / main_test_DiFF.py)")
    g.add_argument("--dist_eval", action="store_true",
                   help="when distributed, every rank evaluates a shard and predictions are gathered")
    return p


def classifier_parser(classes: str = "fake 0, real 1") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("classifier")
    g.add_argument("--nb_classes", default=2, type=int, help=f"classes ({classes})")
    g.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    g.add_argument("--global_pool", action="store_true", default=True,
                   help="features = fc_norm(mean of patch tokens) (default)")
    g.add_argument("--cls_token", action="store_false", dest="global_pool", help="features = norm(x)[:, 0]")
    g.add_argument("--model_kwargs", default=None,
                   help='JSON dict of extra factory keywords, e.g. \'{"img_size": 32, "depth": 2}\' '
                        "(non-standard sizes; stored in the checkpoint)")
    return p


def augment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("augmentation, mixup and criterion")
    g.add_argument("--color_jitter", default=None, type=float, help="used only without --aa")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy")
    g.add_argument("--train_interpolation", default="bicubic", choices=("bicubic", "bilinear"),
                   help="training crop/RandAugment interpolation (bilinear = the original's accident)")
    g.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    g.add_argument("--reprob", default=0.25, type=float, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing mode")
    g.add_argument("--recount", default=1, type=int, help="random erasing count")
    g.add_argument("--mixup", default=0.0, type=float, help="mixup alpha (> 0 enables)")
    g.add_argument("--cutmix", default=0.0, type=float, help="cutmix alpha (> 0 enables)")
    g.add_argument("--cutmix_minmax", default=None, type=float, nargs="+", help="cutmix min/max ratio")
    g.add_argument("--mixup_prob", default=1.0, type=float)
    g.add_argument("--mixup_switch_prob", default=0.5, type=float)
    g.add_argument("--mixup_mode", default="batch", choices=("batch", "pair", "elem"))
    return p


def finetune_data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("fine-tuning data and split files")
    g.add_argument("--finetune_data_path", dest="data_path", action="append", default=[],
                   help="folder with train/ and val/ class folders (repeatable)")
    g.add_argument("--train", default=None, metavar="DIR",
                   help="plain layout: a folder of class folders to train on (with --val; instead of "
                        "--finetune_data_path)")
    g.add_argument("--val", default=None, metavar="DIR", help="plain layout: a folder of class folders to validate on")
    g.add_argument("--train_split", default=None, help="split file '<path><delimiter><label>' for training")
    g.add_argument("--val_split", default=None, help="split file for validation")
    g.add_argument("--dataset_abs_path", default=None, help="prefix joined to the paths in split files")
    g.add_argument("--delimiter_in_split", "--delimiter_in_spilt", dest="delimiter_in_split", default=" ",
                   help="delimiter between path and label in split files (e.g. ',' or ', ')")
    return p


def adapter_parser() -> argparse.ArgumentParser:
    """FS-Adapter flags, shared by the DfD/DiFF and FAS programs. They act on ``*_fs_adapter``
    models only; other models ignore ``--adapter_reduction``, ``--temperature`` and ``--weight_cl``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("FS-Adapter (*_fs_adapter models)")
    g.add_argument("--adapter_reduction", default=4, type=int, help="adapter bottleneck width = D / r")
    g.add_argument("--temperature", default=0.07, type=float, help="temperature of the real-anchored contrastive loss")
    g.add_argument("--weight_cl", default=0.1, type=float,
                   help="loss = classification + weight_cl x real-anchored contrastive loss")
    g.add_argument("--trainable_modules", default="all", choices=("all", "fs-adapter"),
                   help="fs-adapter: train only the adapter, projector and head (the encoder stays frozen)")
    g.add_argument("--train_fc_norm", action="store_true",
                   help="with --trainable_modules fs-adapter, also train fc_norm (the original leaves it frozen at "
                        "identity, A5; released adapter checkpoints were trained that way)")
    return p


def class_names(value: str) -> list[str]:
    """``real,deepfake,diffusion,spoof`` (commas or spaces) -> the list of names."""
    names = [n for n in value.replace(",", " ").split() if n]
    if len(names) < 2 or len({n.lower() for n in names}) != len(names):
        raise argparse.ArgumentTypeError(f"expected two or more distinct class names in index order, got {value!r}")
    return names


def classes_parser() -> argparse.ArgumentParser:
    """``--classes`` of the N-class detector task (``--task Unified``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("N-class detector (--task Unified)")
    g.add_argument("--classes", type=class_names, default=None, metavar="NAME,NAME,...",
                   help="class names in index order; a class folder is the class it is named after (default: "
                        "a '# classes:' line of --train_split / --test_split, else real,deepfake,diffusion,spoof)")
    return p


def downstream_parents(model: str | None) -> list[argparse.ArgumentParser]:
    """Parent groups of the fine-tuning and the test programs (tests accept the fine-tuning flags, so
    one command line works for both); ``model`` is the ``--model`` default."""
    return [optimization_parser(epochs=50, warmup_epochs=5, min_lr=1e-6, blr=1e-3), input_parser(model),
            classifier_parser(), augment_parser(), finetune_data_parser(), eval_parser(), run_parser(),
            distributed_parser()]


def default_output_dir(args: argparse.Namespace, kind: str) -> None:
    """Fill ``args.output_dir`` when empty (``./checkpoint/$USER/experiments_{kind}/{pid}``) and
    ``args.log_dir`` (TensorBoard) when empty (= output_dir)."""
    if not args.output_dir:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "user"
        args.output_dir = str(Path("checkpoint") / user / f"experiments_{kind}" / str(os.getpgid(0)))
    args.log_dir = getattr(args, "log_dir", "") or args.output_dir


def set_effective_lr(args: argparse.Namespace, world_size: int) -> int:
    """``lr = blr * batch_size * accum_iter * world_size / 256`` unless ``--lr``; returns the effective batch."""
    eff_batch = args.batch_size * args.accum_iter * world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
        if args.lr < TINY_LR:
            logger.warning("effective lr %.2e = --blr %.2e x effective batch %d / 256 is tiny: training will "
                           "barely move; give --lr (e.g. --lr %.0e) or a larger batch", args.lr, args.blr,
                           eff_batch, args.blr)
    return eff_batch


def parse_model_kwargs(value: str | dict | None) -> dict[str, Any]:
    """The JSON object of ``--model_kwargs`` (a string, or a dict as stored in a checkpoint's args)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        kwargs = json.loads(value)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model_kwargs must be a JSON object, got {value!r} ({e})") from e
    if not isinstance(kwargs, dict):
        raise UsageError(f"--model_kwargs must be a JSON object, got {value!r}")
    return kwargs
