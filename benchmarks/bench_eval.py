"""Inference throughput (images/s) of the fine-tuned classifier, ``vit_base_patch16`` (2 classes).

    python benchmarks/bench_eval.py --device cpu --baseline --batch_size 16   # ours vs the original's way
    python benchmarks/bench_eval.py --device cpu --baseline --opt_in bf16     # + the bf16 opt-in mode
    python benchmarks/bench_eval.py --device cuda --baseline                  # GPU: bf16 + compile vs fp16
    python benchmarks/bench_eval.py                                           # precision variants per device
    python benchmarks/bench_eval.py --device cpu --iters 1 --rounds 1 --batch_size 2 --input_size 32 \\
        --model_kwargs '{"patch_size": 8, "depth": 1}' --baseline                                # smoke

The same ``predict``-style forward (logits -> softmax) as ``fsvfm.predict``. ``--baseline`` times, in ONE
run and in interleaved rounds (the order reversed every round, so a load change hits all sides alike):

* ``baseline``: the original's way: eager softmax(QK^T)V attention, ``torch.no_grad``, fp32 on the CPU
  (fp16 autocast on CUDA), no compile;
* ``ours``: ``fsvfm.util.accel.prepare_inference`` + ``inference_context`` (what predict and the web app
  run): fused SDPA attention, ``torch.inference_mode``, frozen parameters; fp32 on the CPU (bf16 +
  channels-last on CUDA); ``torch.compile`` with ``--compile on`` (default ``auto``: CUDA only);
* ``opt_in`` (``--opt_in bf16``, predict's ``--amp bf16``): ours with bf16 weights under bf16 autocast, with its largest class-probability
  difference from ours and its argmax agreement on the benchmark's images.

Each side gets images per wall-clock second and, on the CPU, per process-CPU second (less sensitive
to other programs on a shared machine), plus its first batch's time (cold: includes compilation).
One JSON line per device: ``ours``, ``baseline``, ``ratio``, ``settings``, ``uptime`` (load averages).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from fsvfm.registry import create_model
from fsvfm.util.accel import default_amp, inference_context, prepare_inference, set_fused_attention
from fsvfm.util.amp import autocast
from fsvfm.util.args import parse_model_kwargs


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
    kwargs = parse_model_kwargs(bench.model_kwargs)
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
    if bench.compile != "off":
        rows["bf16 + channels-last + compile"] = _throughput(torch.compile(cl_model), cl_images, "bf16", iters,
                                                             warmup + 3)
    return rows


class Side:
    """One configuration under test: its model, input, precision, context and accumulated timings."""

    def __init__(self, name: str, model: torch.nn.Module, images: torch.Tensor, amp: str, *, original: bool,
                 compiled: bool) -> None:
        self.name, self.model, self.images, self.amp = name, model, images, amp
        self.original, self.compiled = original, compiled
        self.wall_s = self.cpu_s = 0.0
        self.count = 0
        self.first_batch_s: float | None = None

    def forward(self) -> torch.Tensor:
        if self.original:
            with torch.no_grad(), autocast(self.images.device, self.amp):
                return self.model(self.images).float().softmax(-1)
        with inference_context(self.images.device, self.amp):
            return self.model(self.images).float().softmax(-1)

    def _sync(self) -> None:
        if self.images.device.type == "cuda":
            torch.cuda.synchronize()

    def warm(self, warmup: int) -> torch.Tensor:
        start = time.perf_counter()
        probs = self.forward()
        self._sync()
        self.first_batch_s = time.perf_counter() - start
        for _ in range(max(warmup - 1, 0)):
            probs = self.forward()
        self._sync()
        return probs

    def time(self, iters: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            self.forward()
        self._sync()
        self.wall_s += time.perf_counter() - wall
        self.cpu_s += time.process_time() - cpu
        self.count += iters * self.images.shape[0]

    def report(self) -> dict:
        gpu = self.images.device.type == "cuda"
        return {"amp": self.amp, "fused_attention": not self.original, "inference_mode": not self.original,
                "compile": self.compiled,
                "images_per_wall_s": round(self.count / self.wall_s, 2),
                "images_per_cpu_s": None if gpu else round(self.count / self.cpu_s, 2),
                "first_batch_s": round(self.first_batch_s, 2)}


def _sides(bench: argparse.Namespace, device: torch.device) -> list[Side]:
    gpu = device.type == "cuda"
    base_model = _model(bench, device)
    set_fused_attention(base_model, False)
    images = torch.randn(bench.batch_size, 3, bench.input_size, bench.input_size, device=device,
                         generator=torch.Generator(device).manual_seed(1))
    sides = [Side("baseline", base_model, images, "fp16" if gpu else "none", original=True, compiled=False)]
    compiled = bench.compile == "on" or (bench.compile == "auto" and gpu)
    opt_ins = [bench.opt_in] if bench.opt_in else []
    for name, amp in [("ours", default_amp(None, device) if gpu else "none"), *(("opt_in", a) for a in opt_ins)]:
        model, side_images = copy.deepcopy(base_model), images
        if gpu:
            model, side_images = model.to(memory_format=torch.channels_last), images.contiguous(
                memory_format=torch.channels_last)
        model = prepare_inference(model, device, amp=amp, compile=compiled)
        sides.append(Side(name, model, side_images, amp, original=False,
                          compiled=hasattr(model, "_orig_mod")))  # False after a fallback
    return sides


def fast_vs_baseline(bench: argparse.Namespace, device: torch.device, iters: int, warmup: int, rounds: int) -> dict:
    """``ours`` and ``baseline`` (and ``opt_in``) timed in interleaved rounds; rates, ratios, score gaps."""
    sides = _sides(bench, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    probs = {s.name: s.warm(warmup).float().cpu() for s in sides}
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            side.time(iters)
    by_name = {s.name: s for s in sides}
    ours, base = by_name["ours"].report(), by_name["baseline"].report()
    out = {"ours": ours, "baseline": base,
           "ratio": {"wall": round(ours["images_per_wall_s"] / base["images_per_wall_s"], 3),
                     "cpu": None if device.type == "cuda"
                     else round(ours["images_per_cpu_s"] / base["images_per_cpu_s"], 3)},
           "ours_vs_baseline_max_prob_diff": float((probs["ours"] - probs["baseline"]).abs().max())}
    if "opt_in" in by_name:
        opt = by_name["opt_in"].report()
        opt["ratio_vs_baseline"] = {"wall": round(opt["images_per_wall_s"] / base["images_per_wall_s"], 3),
                                    "cpu": None if device.type == "cuda"
                                    else round(opt["images_per_cpu_s"] / base["images_per_cpu_s"], 3)}
        opt["max_prob_diff_vs_ours"] = float((probs["opt_in"] - probs["ours"]).abs().max())
        opt["argmax_agreement_vs_ours"] = float((probs["opt_in"].argmax(-1) == probs["ours"].argmax(-1)).double().mean())
        out["opt_in"] = opt
    if device.type == "cuda":
        out["peak_mem_gib_all_sides"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def _load() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    p.add_argument("--model", default="vit_base_patch16")
    p.add_argument("--model_kwargs", default="", help="JSON dict of model keywords (smoke runs)")
    p.add_argument("--batch_size", type=int, default=None, help="default: 16 on the CPU, 64 on GPU")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--iters", type=int, default=None, help="timed batches per side and round (default: 2 CPU, 50 GPU)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of --baseline (default: 3 CPU, 2 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches per side (default: 1 CPU, 10 GPU)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile ours (auto: on CUDA only; it does not win on a small CPU)")
    p.add_argument("--opt_in", choices=("bf16",), default=None, help="also time ours under bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--baseline", action="store_true", help="compare ours with the original's way, interleaved")
    bench = p.parse_args(argv)
    batch_size = bench.batch_size
    if bench.threads:
        torch.set_num_threads(bench.threads)
    devices = [bench.device] if bench.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for name in devices:
        device = torch.device(name)
        gpu = device.type == "cuda"
        iters = bench.iters or (50 if gpu else 2)
        warmup = bench.warmup if bench.warmup is not None else (10 if gpu else 1)
        rounds = bench.rounds or (2 if gpu else 3)
        bench.batch_size = batch_size or (64 if gpu else 16)
        load_start = _load()
        result = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"}
        if bench.baseline:
            result.update(fast_vs_baseline(bench, device, iters, warmup, rounds))
        else:
            result["images_per_s"] = {k: round(v, 2) for k, v in variants(bench, device, iters, warmup).items()}
        result["settings"] = {"model": bench.model, "input_size": bench.input_size, "batch_size": bench.batch_size,
                              "timed_batches_per_round": iters, "rounds": rounds, "warmup": warmup,
                              "threads": torch.get_num_threads(), "compile": bench.compile,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
        result["uptime"] = {"load_average_start": load_start, "load_average_end": _load(),
                            "cpus": os.cpu_count()}
        print(json.dumps(result))
        results.append(result)
    return results


if __name__ == "__main__":
    main()
