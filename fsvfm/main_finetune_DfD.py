"""Full fine-tuning of a pre-trained FS-VFM encoder for deepfake (DfD) and diffusion-face (DiFF)
detection (spec 4). DfD and DiFF differ only in the training folder.

    torchrun --nproc_per_node=2 fsvfm/main_finetune_DfD.py --finetune PRETRAIN.pth \
        --finetune_data_path DATA_DIR --apply_simple_augment --mixup 0.8 --cutmix 1.0 --dist_eval ...

Class indices: fake 0, real 1 (folders are labelled by name); scores are P(real).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from fsvfm.engine_finetune import criterion_loss, evaluate, make_eval_loader, train_one_epoch
from fsvfm.finetune_setup import (
    augment_parser,
    build_classifier,
    build_mixup_and_criterion,
    build_optimizer,
    classifier_parser,
    count_trainable,
    finetune_norm_stats,
    load_pretrained_encoder,
    split_file_parser,
)
from fsvfm.util import dist
from fsvfm.util.args import (
    default_output_dir,
    distributed_parser,
    input_parser,
    optimization_parser,
    run_parser,
    set_effective_lr,
)
from fsvfm.util.checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    model_state_from,
    save_checkpoint,
)
from fsvfm.util.finetune_data import build_finetune_datasets, build_transform, check_classes
from fsvfm.util.log import setup_logging
from fsvfm.util.misc import NativeScalerWithGradNormCount, append_json_line, resolve_amp, seed_everything
from fsvfm.util.norm_stats import STATS_FILENAME, write_mean_std

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parents = [optimization_parser(epochs=50, warmup_epochs=5, min_lr=1e-6, blr=1e-3),
               input_parser("vit_base_patch16"), classifier_parser(), augment_parser(), split_file_parser(),
               run_parser(), distributed_parser()]
    p = argparse.ArgumentParser("FS-VFM fine-tuning for DfD / DiFF", parents=parents)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    g.add_argument("--clip_grad", default=None, type=float, help="gradient norm clipping (default off)")
    g.add_argument("--finetune", default="", help="pre-training checkpoint to start from")
    g.add_argument("--finetune_data_path", dest="data_path", action="append", default=[],
                   help="folder with train/ and val/ class folders (repeatable)")
    g.add_argument("--train_split", default=None, help="split file '<path><delimiter><label>' for training")
    g.add_argument("--val_split", default=None, help="split file for validation")
    g.add_argument("--eval", action="store_true", help="use main_test_DfD.py / main_test_DiFF.py instead")
    g.add_argument("--dist_eval", action="store_true", help="shard validation over ranks and gather")
    g.add_argument("--print_freq", default=100, type=int, help="progress line every N iterations")
    return p


def _resume(args, model, optimizer, scaler) -> float:
    """Restore model/optimizer/scaler/start epoch from --resume (or the newest checkpoint with
    --auto_resume); returns the best validation loss recorded so far."""
    path = args.resume
    if not path and args.auto_resume:
        latest = find_latest_checkpoint(args.output_dir)
        path = str(latest) if latest else ""
    if not path:
        return math.inf
    ckpt = load_checkpoint(path)
    load_model_weights(model, model_state_from(ckpt, path), strict=True, source=path)
    if ckpt.get("optimizer") and ckpt.get("epoch") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler"))
        args.start_epoch = int(ckpt["epoch"]) + 1
    logger.info("Resumed from %s (next epoch %d)", path, args.start_epoch)
    return float(ckpt.get("min_val_loss", math.inf))


def _data(args, mean, std, device):
    train_ds, val_ds = build_finetune_datasets(args, build_transform(True, args, mean, std),
                                               build_transform(False, args, mean, std))
    check_classes(train_ds, "training", args.nb_classes)
    check_classes(val_ds, "validation", args.nb_classes)
    sampler = DistributedSampler(train_ds, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                 shuffle=True, seed=args.seed)
    train_loader = DataLoader(train_ds, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
                              pin_memory=args.pin_mem and device.type == "cuda", drop_last=True)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_ds)} training images per {dist.get_world_size()} process(es) do not "
                         f"fill one batch of {args.batch_size}")
    shard = args.distributed and args.dist_eval
    logger.info("train: %d images, val: %d images (%s validation)", len(train_ds), len(val_ds),
                "sharded" if shard else "full per rank")
    return train_loader, make_eval_loader(val_ds, args, shard), shard


def main(args: argparse.Namespace) -> dict:
    """Fine-tune; returns ``{'min_val_loss', 'last_val', 'output_dir'}``. Never calls ``exit``."""
    default_output_dir(args, "finetune")
    dist.init_distributed_mode(args)
    setup_logging(args.output_dir, dist.get_rank())
    logger.info("job dir: %s\n%s", Path.cwd(), "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    if args.eval:
        logger.info("--eval: test a fine-tuned checkpoint with main_test_DfD.py or main_test_DiFF.py")
        return {}
    try:
        result = _run(args)
        dist.barrier()
        return result
    finally:
        dist.cleanup()


def _run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed + dist.get_rank())
    device = torch.device(args.device)
    amp = resolve_amp(args.amp, device)
    out = Path(args.output_dir)
    mean, std, stats_source = finetune_norm_stats(args)
    logger.info("normalisation: mean %s std %s (from %s)", mean, std, stats_source)
    if dist.is_main_process() and not (out / STATS_FILENAME).exists():
        write_mean_std(out / STATS_FILENAME, mean, std)  # the test programs find it next to the checkpoints
    train_loader, val_loader, shard = _data(args, mean, std, device)

    model = build_classifier(args)
    if args.finetune:
        load_pretrained_encoder(model, args.finetune)
    model.to(device)
    model_without_ddp = model
    model = dist.wrap_model(model, args)
    eff_batch = set_effective_lr(args, dist.get_world_size())
    n_parameters = count_trainable(model_without_ddp)
    logger.info("model %s: %.2fM trainable parameters; base lr %.3e, actual lr %.3e, effective batch %d, "
                "accumulation %d, amp %s", args.model, n_parameters / 1e6, args.blr, args.lr, eff_batch,
                args.accum_iter, amp)
    optimizer = build_optimizer(model_without_ddp, args)
    scaler = NativeScalerWithGradNormCount(device, enabled=amp == "fp16")
    mixup_fn, criterion = build_mixup_and_criterion(args)
    logger.info("criterion %s, mixup %s", criterion.__class__.__name__, mixup_fn is not None)
    min_val_loss = _resume(args, model_without_ddp, optimizer, scaler)
    log_writer = None
    if dist.is_main_process():
        from torch.utils.tensorboard import SummaryWriter
        log_writer = SummaryWriter(log_dir=args.output_dir)

    def save(tag, epoch):
        if dist.is_main_process():
            save_checkpoint(out / f"checkpoint-{tag}.pth", model_without_ddp.state_dict(), optimizer=optimizer,
                            epoch=epoch, scaler=scaler, args=args, model_name=args.model,
                            norm_stats={"mean": mean, "std": std}, min_val_loss=min_val_loss)

    start, val = time.time(), {}
    for epoch in range(args.start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        train = train_one_epoch(model, criterion_loss(criterion), train_loader, optimizer, device, epoch, scaler,
                                args, amp=amp, mixup_fn=mixup_fn, log_writer=log_writer, print_freq=args.print_freq)
        val = evaluate(model_without_ddp, val_loader, device, amp=amp, gather=shard)
        if val["loss"] < min_val_loss:
            min_val_loss = val["loss"]
            save("min_val_loss", epoch)
        if epoch + 1 == args.epochs or (epoch + 1) % args.save_freq == 0:
            save(epoch, epoch)
        logger.info("epoch %d: val AUC %.3f, val loss %.4f (min %.4f)", epoch, val["auc"], val["loss"], min_val_loss)
        if dist.is_main_process():
            append_json_line(out / "log.txt", {
                **{f"train_{k}": v for k, v in train.items()}, "val_loss": val["loss"], "val_auc": val["auc"],
                "val_acc": val["acc"], "epoch": epoch, "n_parameters": n_parameters})
            for key in ("auc", "loss", "acc"):
                log_writer.add_scalar(f"perf/val_{key}", val[key], epoch)
            log_writer.flush()
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start)))
    if log_writer is not None:
        log_writer.close()
    return {"min_val_loss": min_val_loss, "last_val": val, "output_dir": args.output_dir}


def cli(argv: list[str] | None = None) -> dict:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
