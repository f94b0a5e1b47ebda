"""Inference throughput (images/s) of the fine-tuned classifier, ``vit_base_patch16`` (2 classes).

    python benchmarks/bench_eval.py                          # CPU (fp32) and, when present, GPU variants
    python benchmarks/bench_eval.py --device cuda --baseline # + fast path vs the original's configuration
    python benchmarks/bench_eval.py --device cpu --iters 1 --batch_size 2 --input_size 32 \\
        --model_kwargs '{"patch_size": 8, "depth": 1}' --baseline                                # smoke

The same ``predict``-style forward (logits -> softmax) as ``fsvfm.engine_finetune``. Variants on a
GPU: fp32, bf16 autocast, bf16 + channels-last input, and bf16 + channels-last + ``torch.compile``.
``--baseline`` adds two figures from separately built models: the fast path (bf16 where supported,
fused SDPA attention, channels-last, compile unless ``--no_compile``) and the original's way (fp16
autocast, eager attention, no compile), with their ratio and peak memory. One JSON line per device.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fsvfm.registry import create_model
from fsvfm.util.accel import default_amp, maybe_compile, set_fused_attention
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


def _model(bench: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = json.loads(bench.model_kwargs) if bench.model_kwargs else {}
    return create_model(bench.model, num_classes=2, img_size=bench.input_size, **kwargs).to(device).eval()


def variants(bench: argparse.Namespace, device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    model = _model(bench, device)
    images = torch.randn(bench.batch_size, 3, bench.input_size, bench.input_size, device=device)
    if device.type != "cuda":
        return {"fp32": _throughput(model, images, "none", iters, warmup)}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = {"fp32 (tf32)": _throughput(model, images, "none", iters, warmup),
            "bf16": _throughput(model, images, "bf16", iters, warmup)}
    cl_model = model.to(memory_format=torch.channels_last)
    cl_images = images.contiguous(memory_format=torch.channels_last)
    rows["bf16 + channels-last"] = _throughput(cl_model, cl_images, "bf16", iters, warmup)
    if not bench.no_compile:
        rows["bf16 + channels-last + compile"] = _throughput(torch.compile(cl_model), cl_images, "bf16", iters,
                                                             warmup + 3)
    return rows


def fast_vs_baseline(bench: argparse.Namespace, device: torch.device, iters: int, warmup: int) -> dict:
    """The fast path and the original's configuration, each on its own model: images/s, peak memory."""
    out = {}
    for name in ("fast", "baseline"):
        baseline = name == "baseline"
        model = _model(bench, device)
        set_fused_attention(model, not baseline)
        images = torch.randn(bench.batch_size, 3, bench.input_size, bench.input_size, device=device)
        amp = ("fp16" if device.type == "cuda" else "none") if baseline else default_amp(None, device)
        compiled = not baseline and not bench.no_compile and device.type == "cuda"
        if not baseline and device.type == "cuda":
            model, images = model.to(memory_format=torch.channels_last), images.contiguous(
                memory_format=torch.channels_last)
        model = maybe_compile(model, compiled, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        ips = _throughput(model, images, amp, iters, warmup + (3 if compiled else 0))
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        out[name] = {"amp": amp, "fused_attention": not baseline, "compile": compiled,
                     "images_per_s": round(ips, 2), "peak_mem_gib": round(peak, 3) if peak is not None else None}
        del model, images
    out["speedup_vs_baseline"] = round(out["fast"]["images_per_s"] / out["baseline"]["images_per_s"], 3)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    p.add_argument("--model", default="vit_base_patch16")
    p.add_argument("--model_kwargs", default="", help="JSON dict of model keywords (smoke runs)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--iters", type=int, default=None, help="timed batches (default: 3 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches (default: 1 on CPU, 10 on GPU)")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--baseline", action="store_true", help="also compare the fast path with the original's")
    bench = p.parse_args(argv)
    devices = [bench.device] if bench.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for name in devices:
        device = torch.device(name)
        gpu = device.type == "cuda"
        iters = bench.iters or (50 if gpu else 3)
        warmup = bench.warmup if bench.warmup is not None else (10 if gpu else 1)
        result = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads",
                  "model": bench.model, "input_size": bench.input_size, "batch_size": bench.batch_size,
                  "timed_batches": iters,
                  "images_per_s": {k: round(v, 2) for k, v in variants(bench, device, iters, warmup).items()}}
        if bench.baseline:
            result.update(fast_vs_baseline(bench, device, iters, warmup))
        result["torch"] = torch.__version__
        print(json.dumps(result))
        results.append(result)
    return results


if __name__ == "__main__":
    main()
