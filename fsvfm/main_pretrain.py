"""FS-VFM self-supervised pre-training (spec section 3).

    python fsvfm/main_pretrain.py --pretrain_data_path DATA ...            # one process
    torchrun --nproc_per_node=N fsvfm/main_pretrain.py ...                  # DDP (NCCL / gloo on CPU)
    python -m torch.distributed.launch --nproc_per_node=N fsvfm/main_pretrain.py ...
    python -m fsvfm.main_pretrain ...
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fsvfm.engine_pretrain import EMATarget, train_one_epoch
from fsvfm.models_fsfm import vit_target_network
from fsvfm.registry import create_model
from fsvfm.util import dist
from fsvfm.util.accel import (
    add_speed_args,
    build_adamw,
    default_amp,
    fused_attention_blocks,
    maybe_compile,
)
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.args import (
    default_output_dir,
    distributed_parser,
    input_parser,
    optimization_parser,
    run_parser,
    set_effective_lr,
)
from fsvfm.util.checkpoint import (
    CheckpointError,
    beside,
    epoch_checkpoint_tags,
    load_checkpoint,
    load_model_weights,
    model_state_from,
    resolve_checkpoint_path,
    restore_training_state,
    resume_path,
    save_checkpoint,
)
from fsvfm.util.crfrp import CRFRPCollate
from fsvfm.util.device_data import DeviceNormalize, add_loader_args, loader_kwargs
from fsvfm.util.fileio import append_json_line
from fsvfm.util.log import setup_logging, summary_writer
from fsvfm.util.loss_contrastive import CL_LOSSES, build_cl_loss
from fsvfm.util.lr_sched import cosine_scheduler, warn_if_warmup_too_long
from fsvfm.util.pretrain_data import (
    PretrainTransform,
    build_pretrain_dataset,
    dataset_image_paths,
    resolve_pretrain_mean_std,
)
from fsvfm.util.seeding import seed_everything
from fsvfm.visualize import PretrainImageLogger

logger = logging.getLogger("fsvfm.main_pretrain")


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
                   help="update: the target follows the online network by EMA (spec 3.9.4); frozen: the "
                        "target keeps its initial weights, as under the original's launch (spec 9.1 P1)")
    g.add_argument("--clip_grad", default=1.0, type=float, help="global gradient-norm clip on update steps")
    g.add_argument("--pretrain_data_path", dest="data_path", action="append", default=None,
                   help="data root with images/ and parsing_maps/ (repeat for several data sets)")
    g.add_argument("--resume_target_network", default="",
                   help="target checkpoint for --resume (default: the checkpoint-te-* next to it)")
    g.add_argument("--vis_freq", default=20, type=int,
                   help="every N epochs a TensorBoard image grid of fixed faces: input, CRFR-P mask, "
                        "reconstruction (0 = off)")
    g.add_argument("--model_overrides", default="",
                   help='JSON dict of model constructor overrides, e.g. \'{"depth": 2}\' (tests, ablations)')
    speed = parser.add_argument_group("speed")
    add_speed_args(speed)
    add_loader_args(speed)
    return parser


# ------------------------------------------------------------------------------------- set-up
def build_networks(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Online network and a target network that starts as an exact copy of it (spec 3.5)."""
    overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    kwargs = {"img_size": args.input_size, **overrides}
    model = create_model(args.model, family="pretrain", norm_pix_loss=args.norm_pix_loss, **kwargs)
    target = vit_target_network(args.model, **kwargs)
    if args.patch_size is None:
        args.patch_size = model.patch_size
    elif args.patch_size != model.patch_size:
        raise ValueError(f"--patch_size {args.patch_size} does not match {args.model} (patch {model.patch_size})")
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
        raise ValueError(f"{len(dataset)} samples give no full batch of {args.batch_size} on each of "
                         f"{dist.get_world_size()} process(es); lower --batch_size")
    return loader


def resume_paths(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """Online and target checkpoints to resume from (``--resume`` or ``--auto_resume``), or None."""
    online = resume_path(args)
    if online is None:
        if args.resume_target_network and not args.auto_resume:
            raise ValueError("--resume_target_network needs --resume (the online checkpoint)")
        return None
    te_name = online.name.replace("checkpoint-", "checkpoint-te-", 1)
    target = resolve_checkpoint_path(args.resume_target_network or beside(args.resume or online, te_name))
    if not target.is_file():
        raise CheckpointError(f"no target-network checkpoint for {online}: {target} does not exist; "
                              "give it with --resume_target_network")
    return online, target


def resume(args: argparse.Namespace, model: torch.nn.Module, target: torch.nn.Module,
           optimizer: torch.optim.Optimizer, loss_scaler: NativeScalerWithGradNormCount) -> float:
    """Load online/target weights, optimizer, scaler and epoch; returns the best loss so far.

    The optimizer state is taken from the online file, or from the target file when only that
    one has it (released files hold it in both; ours only in the online one, spec 9.1 P15).
    """
    paths = resume_paths(args)
    if paths is None:
        return math.inf
    target_ckpt = load_checkpoint(paths[1])
    load_model_weights(target, model_state_from(target_ckpt, paths[1]), strict=True, source=paths[1])
    online_ckpt = restore_training_state(paths[0], model, optimizer, loss_scaler, args, fallback=target_ckpt)
    logger.info("resumed from %s and %s; continuing at epoch %d", paths[0], paths[1], args.start_epoch)
    return float(online_ckpt.get("min_pretrain_loss", math.inf))


def save_pair(args: argparse.Namespace, tag: str | int, epoch: int, model: torch.nn.Module,
              target: torch.nn.Module, optimizer: torch.optim.Optimizer,
              loss_scaler: NativeScalerWithGradNormCount, best_loss: float) -> None:
    """``checkpoint-{tag}.pth`` (online + optimizer) and ``checkpoint-te-{tag}.pth`` (target), rank 0."""
    if not dist.is_main_process():
        return
    out = Path(args.output_dir)
    common = {"epoch": epoch, "scaler": loss_scaler, "args": args, "model_name": args.model,
              "min_pretrain_loss": best_loss}
    save_checkpoint(out / f"checkpoint-{tag}.pth", model.state_dict(), optimizer=optimizer, **common)
    save_checkpoint(out / f"checkpoint-te-{tag}.pth", target.state_dict(), network="target", **common)


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


# ------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, float]:
    """Run pre-training; returns the last epoch's statistics."""
    dist.init_distributed_mode(args)
    default_output_dir(args, "pretrain")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    setup_logging(args.output_dir, dist.get_rank())
    try:
        return _train(args)
    finally:
        dist.cleanup()


def _train(args: argparse.Namespace) -> dict[str, float]:
    logger.info("job dir: %s", Path(__file__).resolve().parent)
    logger.info("processes: %d (backend %s), device %s", dist.get_world_size(),
                getattr(args, "dist_backend", "none"), args.device)
    device = torch.device(args.device)
    args.amp = default_amp(args.amp, device)
    logger.info("arguments:\n%s", "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    torch.backends.cudnn.benchmark = True
    warn_if_warmup_too_long(args)
    args.data_path = args.data_path or []
    # Same seed on every rank for the weights (so each rank's target copy equals rank 0's online
    # network, which DDP broadcasts), then seed + rank for data order and masks.
    seed_everything(args.seed)
    model, target = build_networks(args, device)
    seed_everything(args.seed + dist.get_rank())
    dataset, mean, std = _dataset_with_stats(args, device)
    normalize = DeviceNormalize(mean, std, device)  # the workers deliver uint8 images
    loader = build_loader(args, dataset)

    model_ddp = dist.wrap_model(model, args)
    optimizer, loss_scaler = build_optimizer(args, model, device)
    best_loss = resume(args, model, target, optimizer, loss_scaler)
    ema = EMATarget(model, target) if args.ema_mode == "update" else None
    if ema is None:
        logger.info("--ema_mode frozen: the target network keeps its initial weights (the original's behaviour)")
    momentum_schedule = cosine_scheduler(args.t_momentum, 1.0, args.epochs, len(loader))
    cl_loss_fn = build_cl_loss(args.cl_loss, args.cl_sample)
    log_writer = summary_writer(args)
    log_images = PretrainImageLogger(log_writer, dataset, mean, std, args.patch_size, args.mask_ratio, args.vis_freq)
    step_model, step_target = maybe_compile(model_ddp, args.compile, device), maybe_compile(target, args.compile, device)

    stats: dict[str, float] = {}
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(step_model, step_target, ema, loader, optimizer, loss_scaler, cl_loss_fn,
                                momentum_schedule, epoch, device, args, log_writer, normalize=normalize)
        log_images(model, epoch)
        best_loss = _end_of_epoch(args, epoch, stats, best_loss, model, target, optimizer, loss_scaler)
    check_replicas_identical(model, "online")
    check_replicas_identical(target, "target")
    if log_writer is not None:
        log_writer.close()
    return stats


def _dataset_with_stats(args: argparse.Namespace,
                        device: torch.device) -> tuple[Dataset, list[float], list[float]]:
    """The pre-training data set (uint8 images, normalised on the device by the engine) and the
    run's normalisation statistics (computed once, spec 3.11)."""
    dataset = build_pretrain_dataset(args.data_path,
                                     PretrainTransform(args.input_size, simple_augment=args.apply_simple_augment))
    mean, std = resolve_pretrain_mean_std(args.output_dir, dataset_image_paths(dataset), args.input_size,
                                          args.normalize_from_IMN, args.batch_size, args.num_workers, device)
    return dataset, mean, std


def _end_of_epoch(args: argparse.Namespace, epoch: int, stats: dict[str, float], best_loss: float,
                  model: torch.nn.Module, target: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  loss_scaler: NativeScalerWithGradNormCount) -> float:
    """Best-loss and periodic checkpoints, then the ``log.txt`` line; returns the best loss."""
    loss = stats.get("loss", math.nan)
    improved = epoch > 0 and loss < best_loss
    best_loss = loss if improved else best_loss
    for tag in epoch_checkpoint_tags(epoch, args, improved, "min_pretrain_loss"):
        save_pair(args, tag, epoch, model, target, optimizer, loss_scaler, best_loss)
    if dist.is_main_process():
        record = {f"train_{k}": v for k, v in stats.items()}
        append_json_line(Path(args.output_dir) / "log.txt", {**record, "epoch": epoch})
    return best_loss


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


if __name__ == "__main__":
    main(get_args_parser().parse_args())
