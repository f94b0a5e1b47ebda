"""Pre-training step throughput on one device: the engine's own ``train_step``, fast path vs baseline.

    python benchmarks/device_pretrain_step.py --baseline             # GPU: ViT-B, batch 128, both configs
    python benchmarks/device_pretrain_step.py --model fsfm_vit_large_patch16 --compile
    python benchmarks/device_pretrain_step.py --device cpu --batch_size 2 --steps 1 --input_size 32 \\
        --model_kwargs '{"patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 2}' --baseline  # smoke

Each step is ``fsvfm.engine_pretrain.train_step``: host batch (pinned on CUDA) copied non-blocking,
both forwards under autocast (the target without gradient), the loss all-reduce / non-finite flag,
backward, clip at 1.0, AdamW step, EMA. Inputs are random images with CRFR-P masks from generated
parsing maps (computed beforehand, as DataLoader workers would); the image mask stays on the host, where
the model reads its kept-patch count, and the model copies it to the device.

* fast (default): bf16 where the card supports it, uint8 images normalised on the device, fused
  SDPA attention, fused AdamW with the non-finite skip on the device, no host sync per step,
  optional ``--compile``;
* ``--baseline`` (also run, same process): how the original program ran: fp16 autocast with loss
  scaling, float32 images normalised on the host, eager attention, no compilation, unfused AdamW,
  the losses read back every step.

Prints one JSON line: both figures, their ratio and the peak memory of each.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay

from fsvfm.data.device import DeviceNormalize
from fsvfm.engine_pretrain import EMATarget, pretrain_loss, train_step
from fsvfm.losses import build_cl_loss
from fsvfm.main_pretrain import get_args_parser
from fsvfm.masking import crfrp_masks
from fsvfm.pretrain_runner import build_networks
from fsvfm.util.accel import (
    build_adamw,
    default_amp,
    maybe_compile,
    set_fused_attention,
)
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.train_step import StepConfig, device_skip_enabled

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ lives beside the package
from tools.synthetic_data import synthetic_parsing_maps  # noqa: E402

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.25)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="fsfm_vit_base_patch16")
    p.add_argument("--model_kwargs", "--model_overrides", dest="model_kwargs", default="",
                   help="JSON dict of model overrides (smoke runs)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--amp", default=None, choices=("bf16", "fp16", "none"),
                   help="fast path precision (default: bf16 on CUDA cards that support it, none on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks on the fast path")
    p.add_argument("--baseline", action="store_true", help="also run the baseline configuration")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 20 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--mask_sets", type=int, default=4, help="distinct CRFR-P batches cycled through")
    bench = p.parse_args(argv)
    if bench.warmup is None:
        bench.warmup = 20 if torch.device(bench.device).type == "cuda" else 1
    return bench


def _batches(bench: argparse.Namespace, patch_size: int, uint8: bool) -> list[dict[str, torch.Tensor]]:
    """Host batches as a DataLoader delivers them: uint8 images (fast) or normalised float32."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(bench.mask_sets):
        maps = torch.from_numpy(synthetic_parsing_maps(bench.batch_size, bench.input_size, seed=i))
        img_mask, sfr_mask, _ = crfrp_masks(maps, patch_size, 0.75, generator=gen)
        images = torch.randint(0, 256, (bench.batch_size, 3, bench.input_size, bench.input_size),
                               dtype=torch.uint8, generator=gen)
        if not uint8:
            images = DeviceNormalize(MEAN, STD, "cpu")(images)
        batch = {"image": images, "img_mask": img_mask, "specific_facial_region_mask": sfr_mask}
        if torch.device(bench.device).type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        out.append(batch)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(bench: argparse.Namespace, device: torch.device, baseline: bool) -> dict:
    """Time ``bench.steps`` engine steps of one configuration; returns its figures."""
    amp = ("fp16" if device.type == "cuda" else "none") if baseline else default_amp(bench.amp, device)
    torch.manual_seed(0)
    run = get_args_parser().parse_args(["--model", bench.model, "--input_size", str(bench.input_size),
                                        "--norm_pix_loss", "--device", str(device), "--amp", amp,
                                        "--model_kwargs", bench.model_kwargs])
    model, target = build_networks(run, device)
    set_fused_attention(model, not baseline)
    set_fused_attention(target, not baseline)
    optimizer = build_adamw(param_groups_weight_decay(model, run.weight_decay), 1e-4, device,
                            fused=False if baseline else None)
    scaler = NativeScalerWithGradNormCount(device, enabled=amp == "fp16")
    ema = EMATarget(model, target)
    loss_fn = pretrain_loss(build_cl_loss(run.cl_loss), run.weight_sfr, run.weight_cl)
    step_config = StepConfig.from_args(run)
    compiled = bench.compile and not baseline
    step_model, step_target = maybe_compile(model, compiled, device), maybe_compile(target, compiled, device)
    normalize = None if baseline else DeviceNormalize(MEAN, STD, device)
    device_skip = device_skip_enabled(optimizer, amp)
    batches = _batches(bench, run.patch_size, uint8=not baseline)
    warmup = bench.warmup

    def step(i: int) -> torch.Tensor:
        row, _ = train_step(step_model, step_target, ema, batches[i % len(batches)], optimizer, scaler, loss_fn,
                            step_config, device, run.t_momentum, normalize=normalize, device_skip=device_skip)
        optimizer.zero_grad(set_to_none=True)
        if baseline:
            row.tolist()  # the original read the loss back every step
        return row

    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    row = None
    for i in range(bench.steps):
        row = step(warmup + i)
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"amp": amp, "compile": compiled, "fused_adamw": bool(optimizer.defaults.get("fused")),
            "fused_attention": not baseline, "uint8_input": not baseline, "host_sync_per_step": baseline,
            "step_ms": round(1000 * elapsed / bench.steps, 2),
            "images_per_s": round(bench.batch_size * bench.steps / elapsed, 2),
            "peak_mem_gib": round(peak, 3) if peak is not None else None,
            "last_loss": round(float(row[4]), 5) if row is not None else None}


def main(argv: list[str] | None = None) -> dict:
    bench = _parse(argv)
    device = torch.device(bench.device)
    fast = run_config(bench, device, baseline=False)
    base = None
    if bench.baseline:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        base = run_config(bench, device, baseline=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": bench.model, "batch_size": bench.batch_size, "input_size": bench.input_size,
        "warmup_steps": bench.warmup,
        "timed_steps": bench.steps, "images_per_s": fast["images_per_s"], "peak_mem_gib": fast["peak_mem_gib"],
        "fast": fast, "baseline": base,
        "speedup_vs_baseline": round(fast["images_per_s"] / base["images_per_s"], 3) if base else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
