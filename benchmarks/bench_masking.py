"""CRFR-P masking throughput on one CPU thread (issue target: >= 5,000 samples/s at batch 64, 224 px).

    python benchmarks/bench_masking.py [--batch_size 64] [--input_size 224] [--iters 200]

Prints samples/s of the masking itself (parsing maps -> masks) and of the whole collate
(which also stacks the float images, a plain memory copy), plus the masked-count check.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fsvfm.masking import CRFRPCollate, crfrp_masks, num_masked_patches

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ lives beside the package
from tools.synthetic_data import synthetic_parsing_maps  # noqa: E402


def _rate(fn, batch_size: int, iters: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch_size * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    maps = torch.from_numpy(synthetic_parsing_maps(args.batch_size, args.input_size, seed=0))
    masking = _rate(lambda: crfrp_masks(maps, args.patch_size, args.mask_ratio), args.batch_size, args.iters)
    samples = [{"image": torch.randn(3, args.input_size, args.input_size), "parsing_map": m[None]} for m in maps]
    collate = CRFRPCollate(args.input_size, args.patch_size, args.mask_ratio)
    full = _rate(lambda: collate(samples), args.batch_size, max(args.iters // 10, 5))

    length = (args.input_size // args.patch_size) ** 2
    expected = num_masked_patches(length, args.mask_ratio)
    counts = set()
    for region in range(6):
        img_mask, sfr_mask, _ = crfrp_masks(maps, args.patch_size, args.mask_ratio, region=region)
        counts |= set(img_mask.sum(dim=1).long().tolist())
        assert bool((img_mask >= sfr_mask).all()), "a region patch is not masked"
    ok = counts == {expected}
    print(json.dumps({"batch_size": args.batch_size, "input_size": args.input_size, "threads": args.threads,
                      "masking_samples_per_s": round(masking, 1), "collate_samples_per_s": round(full, 1),
                      "masked_per_sample": sorted(counts), "expected": expected, "count_check": ok}))
    if not ok:
        raise SystemExit("masked-count check failed")


if __name__ == "__main__":
    main()
