"""Inference throughput (images/s) of the test programs' model, ``vit_base_patch16`` (2 classes).

    python benchmarks/bench_eval.py                 # CPU (fp32) and, when present, GPU variants
    python benchmarks/bench_eval.py --device cpu --iters 3

On a GPU it measures fp32, bf16 autocast, bf16 + channels-last input, and bf16 + channels-last +
``torch.compile``; the same ``predict``-style forward (logits -> softmax) as ``fsvfm.engine_finetune``.
"""
from __future__ import annotations

import argparse
import time

import torch

from fsvfm.registry import create_model
from fsvfm.util.amp import autocast


def _throughput(model, images, amp: str, iters: int, warmup: int) -> float:
    device = images.device

    def step():
        with torch.no_grad(), autocast(device, amp):
            return model(images).float().softmax(-1)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images.shape[0] * iters / (time.perf_counter() - start)


def run(device: torch.device, batch_size: int, iters: int, warmup: int, compile_: bool) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = create_model("vit_base_patch16", num_classes=2).to(device).eval()
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    if device.type != "cuda":
        return [("fp32", _throughput(model, images, "none", iters, warmup))]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = [("fp32 (tf32)", _throughput(model, images, "none", iters, warmup)),
            ("bf16", _throughput(model, images, "bf16", iters, warmup))]
    cl_model = model.to(memory_format=torch.channels_last)
    cl_images = images.contiguous(memory_format=torch.channels_last)
    rows.append(("bf16 + channels-last", _throughput(cl_model, cl_images, "bf16", iters, warmup)))
    if compile_:
        compiled = torch.compile(cl_model)
        rows.append(("bf16 + channels-last + compile", _throughput(compiled, cl_images, "bf16", iters, warmup + 3)))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--iters", type=int, default=None, help="timed batches (default: 3 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches (default: 1 on CPU, 10 on GPU)")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile variant")
    args = p.parse_args(argv)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; vit_base_patch16, 224x224, batch {args.batch_size}")
    for name in devices:
        device = torch.device(name)
        gpu = device.type == "cuda"
        label = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
        iters = args.iters or (50 if gpu else 3)
        warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
        for variant, ips in run(device, args.batch_size, iters, warmup, not args.no_compile):
            print(f"{label:<32} {variant:<32} {ips:10.1f} images/s")


if __name__ == "__main__":
    main()
