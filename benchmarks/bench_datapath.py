"""Data-path throughput per worker process: files on disk -> decoded, augmented, masked/collated batch.

    python benchmarks/bench_datapath.py                          # 256 generated faces, 224 px, batch 64
    python benchmarks/bench_datapath.py --num_images 8 --input_size 32 --batch_size 4 --passes 1  # smoke
    python benchmarks/bench_datapath.py --profile pretrain       # cProfile of the pre-training path

Runs in one process with one torch thread, as a DataLoader worker does. The ``*_per_worker`` figures
are samples per CPU second of that process (what one worker delivers with a core to itself; N
workers give about N times that when N cores are free); wall-clock rates are printed as well, and
match them on an idle machine. Each path
reads the same generated faces (``fsvfm.data.synthetic``: PNG images with .npy parsing maps); one
untimed pass warms the page cache first. Paths:

* pre-training: ``FaceParsingDataset`` + ``PretrainTransform`` (uint8 out) + ``CRFRPCollate``
  (CRFR-P masks), and the same with the former host-side float normalisation, for the ratio;
* fine-tuning: ``LabelledImageFolder`` + the training transform of ``build_transform`` (the
  recipes' ``--apply_simple_augment``: RandAugment, random erasing) + the default collate.

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fsvfm.data.finetune import LabelledImageFolder, build_transform
from fsvfm.data.pretrain import FaceParsingDataset, PretrainTransform
from fsvfm.data.synthetic import make_synthetic_pretrain_dataset
from fsvfm.masking import CRFRPCollate
from fsvfm.util.args import augment_parser

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.25)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=256)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--passes", type=int, default=2, help="timed passes over the images (after one warm-up)")
    p.add_argument("--simple_augment", action="store_true", help="pre-training with --apply_simple_augment")
    p.add_argument("--data_dir", default=None, help="reuse/keep the generated data here (default: a temp dir)")
    p.add_argument("--profile", choices=("pretrain", "finetune"), default=None,
                   help="print the cProfile top 25 (cumulative) of one path to stderr")
    return p.parse_args(argv)


def make_data(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """Pre-training root (images/ + parsing_maps/) and a fine-tuning ImageFolder that links the
    same PNGs into train/real_faces and train/fake_faces."""
    pre = root / "pretrain"
    if not (pre / "images").is_dir() or len(os.listdir(pre / "images")) != n:
        make_synthetic_pretrain_dataset(pre, n, size=size, seed=0)
    fine = root / "finetune" / "train"
    for i, image in enumerate(sorted((pre / "images").iterdir())):
        dst = fine / ("real_faces" if i % 2 else "fake_faces") / image.name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(image, dst)
    return pre, fine


def _rate(loader: DataLoader, passes: int, profile: bool = False) -> tuple[float, float]:
    """Samples per CPU second of this process and per wall-clock second, over ``passes`` full
    passes after one untimed pass."""
    for _ in loader:
        pass
    profiler = cProfile.Profile() if profile else None
    count, cpu, wall = 0, time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(passes):
        for batch in loader:
            count += len(batch["image"] if isinstance(batch, dict) else batch[0])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    return count / cpu, count / wall


def pretrain_loader(root: Path, bench: argparse.Namespace, host_float: bool) -> DataLoader:
    mean, std = (MEAN, STD) if host_float else (None, None)
    transform = PretrainTransform(bench.input_size, mean, std, simple_augment=bench.simple_augment)
    return DataLoader(FaceParsingDataset(root, transform), batch_size=bench.batch_size, shuffle=True,
                      num_workers=0, drop_last=True,
                      collate_fn=CRFRPCollate(bench.input_size, bench.patch_size, 0.75))


def finetune_loader(root: Path, bench: argparse.Namespace) -> DataLoader:
    args = augment_parser().parse_args([])
    args.input_size, args.apply_simple_augment = bench.input_size, True
    dataset = LabelledImageFolder(str(root), transform=build_transform(True, args, MEAN, STD))
    return DataLoader(dataset, batch_size=bench.batch_size, shuffle=True, num_workers=0, drop_last=True)


def main(argv: list[str] | None = None) -> dict:
    bench = _parse(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pre, fine = make_data(Path(bench.data_dir or tmp), bench.num_images, bench.input_size)
        fast = _rate(pretrain_loader(pre, bench, False), bench.passes, bench.profile == "pretrain")
        host_float = _rate(pretrain_loader(pre, bench, True), bench.passes)
        finetune = _rate(finetune_loader(fine, bench), bench.passes, bench.profile == "finetune")
    per_worker = round(fast[0], 1), round(host_float[0], 1)  # the ratio is the one of the printed figures
    result = {
        "pretrain_samples_per_s_per_worker": per_worker[0],
        "finetune_samples_per_s_per_worker": round(finetune[0], 1),
        "pretrain_host_float_samples_per_s_per_worker": per_worker[1],
        "uint8_vs_host_float": round(per_worker[0] / per_worker[1], 3),
        "wall_clock_samples_per_s": {"pretrain": round(fast[1], 1), "pretrain_host_float": round(host_float[1], 1),
                                     "finetune": round(finetune[1], 1)},
        "pretrain_simple_augment": bench.simple_augment, "finetune_transform": "simple_augment (RandAugment)",
        "num_images": bench.num_images, "input_size": bench.input_size, "batch_size": bench.batch_size,
        "timed_passes": bench.passes, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
