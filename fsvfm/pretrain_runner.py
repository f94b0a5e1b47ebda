"""FS-VFM self-supervised pre-training: networks, data, resume, the epoch loop and its checkpoint pairs.
The command line is ``fsvfm/main_pretrain.py``.

Each checkpoint pair (online ``checkpoint-{tag}.pth`` + target ``checkpoint-te-{tag}.pth``) is one
checkpoint set (``util.checkpoint.save_checkpoint_set``): complete-or-absent, with a manifest and a run id.
A run draws one run id; a resumed run keeps the id of the pair it resumes (released pairs have none: it
draws a new one), so the pairs of one training, interrupted or not, share it. ``--auto_resume`` takes the
newest complete, readable pair; ``--resume`` checks that its two files come from one save. Weights are
checked for NaN/inf after every epoch, before any save.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fsvfm.data.device import DeviceNormalize, loader_kwargs
from fsvfm.data.pretrain import PretrainTransform, build_pretrain_dataset, dataset_image_paths
from fsvfm.engine_pretrain import EMATarget, pretrain_loss, train_one_epoch
from fsvfm.losses import build_cl_loss
from fsvfm.masking import CRFRPCollate
from fsvfm.models_fsfm import vit_target_network
from fsvfm.reconstruction import PretrainImageLogger
from fsvfm.registry import create_model, model_family
from fsvfm.util import dist
from fsvfm.util.accel import (
    build_adamw,
    default_amp,
    fused_attention_blocks,
    maybe_compile,
)
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.args import (
    parse_model_kwargs,
    set_effective_lr,
)
from fsvfm.util.checkpoint import (
    CheckpointError,
    CheckpointSet,
    NonFiniteWeightsError,
    args_dict,
    beside,
    check_finite_state,
    checkpoint_payload,
    drop_log_records_from,
    epoch_checkpoint_tags,
    link_checkpoint_set,
    load_checkpoint_set,
    load_latest_checkpoint_set,
    load_model_weights,
    model_state_from,
    new_run_id,
    resolve_checkpoint_path,
    restore_training_state,
    resume_path,
    save_checkpoint_set,
)
from fsvfm.util.errors import UsageError
from fsvfm.util.fileio import append_json_line
from fsvfm.util.images import unreadable_files
from fsvfm.util.log import summary_writer
from fsvfm.util.lr_sched import lr_at, momentum_at, warn_if_warmup_too_long
from fsvfm.util.norm_stats import resolve_pretrain_mean_std
from fsvfm.util.seeding import seed_everything
from fsvfm.util.train_step import SkipStreak, StepConfig

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- set-up
def build_networks(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Online network and a target network that starts as an exact copy of it."""
    kwargs = {"img_size": args.input_size, **parse_model_kwargs(args.model_kwargs)}
    model = create_model(args.model, family="pretrain", norm_pix_loss=args.norm_pix_loss, **kwargs)
    target = vit_target_network(args.model, **kwargs)
    if args.patch_size is None:
        args.patch_size = model.patch_size
    elif args.patch_size != model.patch_size:
        raise UsageError(f"--patch_size {args.patch_size} does not match {args.model} (patch {model.patch_size})")
    missing, _ = target.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"target parameters without an online counterpart: {missing}")
    target.requires_grad_(False)
    return model.to(device), target.to(device)


def build_loader(args: argparse.Namespace, dataset: Dataset) -> DataLoader:
    """Shuffled DistributedSampler (also for one process), drop_last, CRFR-P collate of uint8 images;
    pinned memory on CUDA, persistent workers, ``--prefetch_factor`` batches per worker."""
    sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                 shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size, drop_last=True,
                        collate_fn=CRFRPCollate(args.input_size, args.patch_size, args.mask_ratio),
                        **loader_kwargs(args.num_workers, args.device, args.pin_mem, args.prefetch_factor))
    if len(loader) == 0:
        raise UsageError(f"{len(dataset)} samples give no full batch of {args.batch_size} on each of "
                         f"{dist.get_world_size()} process(es); lower --batch_size")
    return loader


@dataclass
class _Run:
    """What the epoch loop saves: the two networks, the optimizer and scaler, the run id, the best loss."""

    model: torch.nn.Module
    target: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_scaler: NativeScalerWithGradNormCount
    run_id: str = ""
    best_loss: float = math.inf


def find_resume_set(args: argparse.Namespace) -> CheckpointSet | None:
    """The online/target pair to resume from, loaded and checked, or None (a fresh run).

    ``--resume``: that file and the ``checkpoint-te-*`` next to it (or ``--resume_target_network``),
    which must come from the same save (run id and epoch, when the files record them; released pairs
    do not). ``--auto_resume``: the newest complete and readable pair in ``--output_dir`` (an
    interrupted, truncated or mismatched newer pair is skipped with a warning)."""
    if args.resume_target_network and not args.resume:
        raise UsageError("--resume_target_network needs --resume (the online checkpoint)")
    if args.resume:
        online = resume_path(args)  # names a missing --resume file
        te_name = online.name.replace("checkpoint-", "checkpoint-te-", 1)
        if not args.resume_target_network and te_name == online.name:
            raise UsageError(f"cannot tell the target-network file of {online} (its name does not start with "
                             "checkpoint-); give it with --resume_target_network")
        target = resolve_checkpoint_path(args.resume_target_network or beside(args.resume, te_name))
        if not target.is_file():
            raise CheckpointError(f"no target-network checkpoint for {online}: {target} does not exist; "
                                  "give it with --resume_target_network")
        return load_checkpoint_set({"online": online, "target": target}, online.stem)
    if args.auto_resume:
        found = load_latest_checkpoint_set(args.output_dir)
        if found is None:
            logger.info("--auto_resume: no complete checkpoint pair in %s, starting from scratch", args.output_dir)
        return found
    return None


def resume(args: argparse.Namespace, run: _Run, found: CheckpointSet | None) -> None:
    """Load the pair ``found`` into ``run`` (online/target weights, optimizer, scaler, epoch, best loss,
    run id); a fresh run (``found`` None) draws a new run id. With ``--resume``/``--auto_resume`` the
    ``log.txt`` records from the start epoch on are dropped on rank 0 (they are logged again)."""
    if found is None:
        run.run_id = new_run_id()
    else:
        _load_pair(args, run, found)
    if dist.is_main_process() and (args.resume or args.auto_resume):
        drop_log_records_from(Path(args.output_dir) / "log.txt", args.start_epoch)


def _load_pair(args: argparse.Namespace, run: _Run, found: CheckpointSet) -> None:
    """The optimizer state is taken from the online file, or from the target file when only that
    one has it (released files hold it in both; ours only in the online one, DEVIATIONS.md P15)."""
    online_path, target_path = found.paths["online"], found.paths["target"]
    online_ckpt, target_ckpt = found.checkpoints["online"], found.checkpoints["target"]
    _check_pretrain_checkpoint(online_path, online_ckpt)
    hint = (f"; resume with the --model and --model_kwargs it was trained with "
            f"({online_ckpt.get('model_name') or args_dict(online_ckpt).get('model', 'see its args')})")
    try:
        restore_training_state(online_path, run.model, run.optimizer, run.loss_scaler, args, fallback=target_ckpt,
                               checkpoint=online_ckpt)
        load_model_weights(run.target, model_state_from(target_ckpt, target_path), strict=True, source=target_path)
    except NonFiniteWeightsError:
        raise
    except CheckpointError as e:  # a pair of another size
        raise CheckpointError(f"{e}{hint}") from e
    run.run_id = str(online_ckpt.get("run_id") or new_run_id())
    run.best_loss = float(online_ckpt.get("min_pretrain_loss", math.inf))
    logger.info("resumed from %s and %s (run %s); continuing at epoch %d", online_path, target_path, run.run_id,
                args.start_epoch)


def _check_pretrain_checkpoint(path: Path, checkpoint: dict) -> None:
    """``CheckpointError`` when the file records a model of another family (e.g. a fine-tuned one)."""
    name = checkpoint.get("model_name") or args_dict(checkpoint).get("model")
    try:
        family = model_family(str(name)) if name else "pretrain"
    except KeyError:
        return
    if family != "pretrain":
        raise CheckpointError(f"{path} holds a {name} model ({family} checkpoint), not a pre-training one; "
                              "--resume takes a checkpoint-N.pth written by main_pretrain.py")


def save_pair(args: argparse.Namespace, tag: str | int, epoch: int, run: _Run) -> None:
    """``checkpoint-{tag}.pth`` (online + optimizer) and ``checkpoint-te-{tag}.pth`` (target) as one
    checkpoint set (complete-or-absent, tagged with ``run.run_id`` and ``epoch``), on rank 0."""
    if not dist.is_main_process():
        return
    common = {"epoch": epoch, "scaler": run.loss_scaler, "args": args, "model_name": args.model,
              "min_pretrain_loss": run.best_loss}
    payloads = {"online": checkpoint_payload(run.model.state_dict(), optimizer=run.optimizer, **common),
                "target": checkpoint_payload(run.target.state_dict(), network="target", **common)}
    save_checkpoint_set(args.output_dir, tag, payloads, epoch=epoch, run_id=run.run_id)


def check_replicas_identical(model: torch.nn.Module, name: str) -> None:
    """Compare per-parameter checksums across ranks (DDP must keep replicas bit-identical)."""
    if dist.get_world_size() == 1:
        return
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                        for p in model.parameters()]).flatten()
    gathered = dist.all_gather_cat(sums[None])
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(f"{name} weights differ between ranks")
    logger.info("%s weights identical on all %d ranks", name, dist.get_world_size())


# ------------------------------------------------------------------------------------- run
def _prepare(args: argparse.Namespace) -> torch.device:
    """Fill the defaults that depend on the device (logged); returns the device."""
    device = torch.device(args.device)
    args.amp = default_amp(args.amp, device)
    logger.info("device %s, amp %s", device, args.amp)
    torch.backends.cudnn.benchmark = True
    warn_if_warmup_too_long(args)
    return device


def train(args: argparse.Namespace) -> dict[str, float]:
    """Pre-train (after ``util.startup.start_run``); returns the last epoch's statistics."""
    device = _prepare(args)
    step = StepConfig.from_args(args)  # refuses --accum_iter/--print_freq below 1 before any work
    # Same seed on every rank for the weights (so each rank's target copy equals rank 0's online
    # network, which DDP broadcasts), then seed + rank for data order and masks.
    seed_everything(args.seed)
    model, target = build_networks(args, device)
    seed_everything(args.seed + dist.get_rank())
    found = find_resume_set(args)
    dataset, mean, std = _dataset_with_stats(args, device, resumed=found is not None)
    normalize = DeviceNormalize(mean, std, device)  # the workers deliver uint8 images
    loader = build_loader(args, dataset)

    model_ddp = dist.wrap_model(model, args, move_inputs=False)  # the mask stays on the host for the model
    run = _Run(model, target, *build_optimizer(args, model, device))
    resume(args, run, found)
    ema = EMATarget(model, target) if args.ema_mode == "update" else None
    if ema is None:
        logger.info("--ema_mode frozen: the target network keeps its initial weights (the original's behaviour)")
    loss_fn = pretrain_loss(build_cl_loss(args.cl_loss, args.cl_sample), args.weight_sfr, args.weight_cl)
    lr_of = partial(lr_at, args=args)
    momentum_of = momentum_at(args.t_momentum, args.epochs)
    log_writer = summary_writer(args)
    log_images = PretrainImageLogger(log_writer, dataset, mean, std, args.patch_size, args.mask_ratio, args.vis_freq)
    step_model, step_target = maybe_compile(model_ddp, args.compile, device), maybe_compile(target, args.compile, device)

    stats: dict[str, float] = {}
    streak = SkipStreak()  # non-finite batches in a row, across epochs
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(step_model, step_target, ema, loader, run.optimizer, run.loss_scaler, loss_fn,
                                epoch, device, step, lr_at=lr_of, momentum_at=momentum_of, log_writer=log_writer,
                                normalize=normalize, streak=streak)
        log_images(model, epoch)
        stats["skipped_files"] = len(unreadable_files(dataset, device))
        _end_of_epoch(args, epoch, stats, run)
    check_replicas_identical(model, "online")
    check_replicas_identical(target, "target")
    if log_writer is not None:
        log_writer.close()
    return stats


def _dataset_with_stats(args: argparse.Namespace, device: torch.device,
                        resumed: bool) -> tuple[Dataset, list[float], list[float]]:
    """The pre-training data set (uint8 images, normalised on the device by the engine) and the
    run's normalisation statistics (computed once; a fresh run refuses an output folder
    holding the statistics of other data)."""
    dataset = build_pretrain_dataset(args.data_path,
                                     PretrainTransform(args.input_size, simple_augment=args.apply_simple_augment))
    mean, std = resolve_pretrain_mean_std(args.output_dir, dataset_image_paths(dataset), args.input_size,
                                          args.normalize_from_IMN, args.batch_size, args.num_workers, device,
                                          data_paths=args.data_path, resumed=resumed)
    return dataset, mean, std


def _end_of_epoch(args: argparse.Namespace, epoch: int, stats: dict[str, float], run: _Run) -> None:
    """Refuse non-finite weights (nothing saved), then best-loss and periodic checkpoint pairs, then the
    ``log.txt`` line."""
    hint = (f"; training diverged and epoch {epoch} is not saved: lower --blr (or --lr) or use --amp bf16/none, "
            "then restart or --auto_resume from the last saved pair")
    for name, net in (("online", run.model), ("target", run.target)):
        check_finite_state(net, f"the {name} network after epoch {epoch}", hint=hint)  # every rank: all stop
    logger.info("epoch %d: %d unreadable sample(s) skipped so far (each named once above)", epoch,
                stats["skipped_files"])
    loss = stats.get("loss", math.nan)
    improved = epoch > 0 and loss < run.best_loss
    run.best_loss = loss if improved else run.best_loss
    tags = epoch_checkpoint_tags(epoch, args, improved, "min_pretrain_loss")  # [best?, epoch?]
    if tags:
        save_pair(args, tags[-1], epoch, run)   # the epoch's set when it has one, else the best
    for tag in tags[:-1]:                     # the same weights: a second name, not a copy
        if dist.is_main_process():
            link_checkpoint_set(args.output_dir, tags[-1], tag)
    if dist.is_main_process():
        record = {f"train_{k}": v for k, v in stats.items()}
        append_json_line(Path(args.output_dir) / "log.txt", {**record, "epoch": epoch})


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module,
                    device: torch.device) -> tuple[torch.optim.Optimizer, NativeScalerWithGradNormCount]:
    """AdamW over ``model`` at the effective lr (``--blr`` x effective batch / 256 unless ``--lr``;
    fused on CUDA unless ``--no_fused_optimizer``) and the loss scaler (active only for ``--amp
    fp16``); logs the model size, lr and speed settings."""
    eff_batch = set_effective_lr(args, dist.get_world_size())
    logger.info("model %s: %.1fM trainable parameters; effective batch %d, lr %.3e (blr %.3e)", args.model,
                sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, eff_batch, args.lr, args.blr)
    optimizer = build_adamw(param_groups_weight_decay(model, args.weight_decay), args.lr, device,
                            fused=args.fused_optimizer)
    log_speed_settings(args, model, optimizer)
    return optimizer, NativeScalerWithGradNormCount(device, enabled=args.amp == "fp16")


def log_speed_settings(args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One line with what decides the step speed (precision, attention kernel, optimizer, compile)."""
    fused, total = fused_attention_blocks(model)
    logger.info("speed: amp %s, fused SDPA attention in %d/%d blocks, %s AdamW, compile %s, "
                "%d loader workers (prefetch %d)", args.amp, fused, total,
                "fused" if optimizer.defaults.get("fused") else "unfused", "on" if args.compile else "off",
                args.num_workers, args.prefetch_factor)
