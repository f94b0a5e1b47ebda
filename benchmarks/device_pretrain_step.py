"""Pre-training step throughput on one device: online + target ViT-B, CRFR-P masks, bf16, AdamW, EMA.

    python benchmarks/device_pretrain_step.py                       # GPU: batch 128, 20 warm-up + 30 timed steps
    python benchmarks/device_pretrain_step.py --device cpu --batch_size 2 --steps 2   # smoke run

Each step is what the engine does per iteration: both forwards under autocast (the target without
gradient), the loss all-reduce/non-finite check, backward, clip at 1.0, AdamW step, EMA update.
Inputs are random images with CRFR-P masks from generated parsing maps (computed on the CPU
beforehand, as DataLoader workers would). Prints one JSON line with images/s and peak memory.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from timm.optim import param_groups_weight_decay

from fsvfm.engine_pretrain import EMATarget, forward_losses
from fsvfm.main_pretrain import build_networks, get_args_parser
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.crfrp import crfrp_masks
from fsvfm.util.loss_contrastive import build_cl_loss
from fsvfm.util.synthetic import synthetic_parsing_maps
from fsvfm.util.train_step import reduce_losses


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="fsfm_vit_base_patch16")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 20 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--mask_sets", type=int, default=4, help="distinct CRFR-P batches cycled through")
    return p.parse_args()


def _batches(args: argparse.Namespace, patch_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(args.mask_sets):
        maps = torch.from_numpy(synthetic_parsing_maps(args.batch_size, args.input_size, seed=i))
        img_mask, sfr_mask, _ = crfrp_masks(maps, patch_size, 0.75, generator=gen)
        out.append({"image": torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen),
                    "img_mask": img_mask, "specific_facial_region_mask": sfr_mask})
    return [{k: v.to(device) for k, v in b.items()} for b in out]


def main() -> None:
    bench = _parse()
    device = torch.device(bench.device)
    torch.manual_seed(0)
    run = get_args_parser().parse_args(["--model", bench.model, "--input_size", str(bench.input_size),
                                        "--norm_pix_loss", "--device", str(device), "--amp", bench.amp])
    model, target = build_networks(run, device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, run.weight_decay), lr=1e-4, betas=(0.9, 0.95))
    scaler = NativeScalerWithGradNormCount(device, enabled=bench.amp == "fp16")
    ema, cl_loss = EMATarget(model, target), build_cl_loss(run.cl_loss)
    batches = _batches(bench, run.patch_size, device)
    warmup = bench.warmup if bench.warmup is not None else (20 if device.type == "cuda" else 1)

    def step(i: int) -> float:
        losses = forward_losses(model, target, batches[i % len(batches)], cl_loss, run, device, bench.amp)
        means, non_finite = reduce_losses(losses)
        if not non_finite:
            scaler(losses["loss"], optimizer, clip_grad=run.clip_grad, parameters=model.parameters())
            optimizer.zero_grad(set_to_none=True)
            ema.update(run.t_momentum)
        return means["loss"]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = float("nan")
    for i in range(bench.steps):
        loss = step(warmup + i)
    sync()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": bench.model, "batch_size": bench.batch_size, "input_size": bench.input_size, "amp": bench.amp,
        "warmup_steps": warmup, "timed_steps": bench.steps, "step_ms": round(1000 * elapsed / bench.steps, 2),
        "images_per_s": round(bench.batch_size * bench.steps / elapsed, 2),
        "peak_mem_gib": round(peak, 3) if peak is not None else None, "last_loss": round(loss, 5),
        "torch": torch.__version__}))


if __name__ == "__main__":
    main()
