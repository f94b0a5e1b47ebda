"""Data-path throughput per worker process: files on disk -> decoded, augmented, masked/collated batch.

    python benchmarks/bench_datapath.py                          # 256 generated faces, 224 px, batch 64
    python benchmarks/bench_datapath.py --num_images 8 --input_size 32 --batch_size 4 --passes 1  # smoke
    python benchmarks/bench_datapath.py --profile pretrain       # cProfile of our pre-training path

Runs in one process with one torch thread, as a DataLoader worker does. The ``*_per_worker`` figures
are samples per CPU second of that process (what one worker delivers with a core to itself; N
workers give about N times that when N cores are free); wall-clock rates are printed as well, and
match them on an idle machine. Each path
reads the same generated faces (``tools.synthetic_data``: PNG images with .npy parsing maps); one
untimed pass warms the page cache first. Paths:

* pre-training, ours: ``FaceParsingDataset`` + ``PretrainTransform`` (uint8 out) + ``CRFRPCollate``
  (CRFR-P masks for the whole batch);
* pre-training, original-like (the ratio's baseline): PIL decode, torchvision ``ToTensor`` ->
  ``Resize`` -> ``Normalize`` in float32 on the host, the int8 map as loaded, and CRFR-P drawn sample
  by sample (``randperm`` per group, as the original's collate does). Its group membership is pooled
  once per batch, which is faster than the original, so the ratio is a lower bound;
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
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fsvfm.data.finetune import LabelledImageFolder, build_transform
from fsvfm.data.pretrain import FaceParsingDataset, PretrainTransform, list_samples
from fsvfm.masking import FACE_BOUNDARY, NUM_CHOOSABLE_REGIONS, REGION_GROUPS, CRFRPCollate
from fsvfm.util.args import augment_parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ lives beside the package
from tools.synthetic_data import make_synthetic_pretrain_dataset  # noqa: E402

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
    p.add_argument("--profile", choices=("pretrain", "original", "finetune"), default=None,
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


def pretrain_loader(root: Path, bench: argparse.Namespace) -> DataLoader:
    transform = PretrainTransform(bench.input_size, simple_augment=bench.simple_augment)
    return DataLoader(FaceParsingDataset(root, transform), batch_size=bench.batch_size, shuffle=True,
                      num_workers=0, drop_last=True,
                      collate_fn=CRFRPCollate(bench.input_size, bench.patch_size, 0.75))


class OriginalLikeDataset(Dataset):
    """The original's sample: PIL decode, float ToTensor -> Resize -> Normalize, the map as loaded."""

    def __init__(self, root: Path, input_size: int) -> None:
        self.samples = list_samples(root)[0]
        self.transform = transforms.Compose([
            transforms.ToTensor(),
            transforms.Resize((input_size, input_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image_path, map_path = self.samples[index]
        image = Image.open(image_path).convert("RGB")
        return {"image": self.transform(image), "parsing_map": torch.from_numpy(np.load(map_path))}


def original_like_masks(maps: torch.Tensor, patch: int, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CRFR-P the original's way: one region per batch, then a Python loop over samples and groups
    with ``randperm`` draws, and the fix-up to ``T = ratio * L`` masked patches per sample."""
    b, h, w = maps.shape[0], maps.shape[-2], maps.shape[-1]
    length = (h // patch) * (w // patch)
    target = ratio * length
    maps = maps.reshape(b, 1, h, w)

    def pooled(labels: tuple[int, ...]) -> torch.Tensor:
        hit = sum((maps == label).float() for label in labels)
        return F.max_pool2d(hit, patch, patch).reshape(b, length)

    member = [pooled((10, 0)) * pooled((1,)) if g == FACE_BOUNDARY else pooled(labels)
              for g, (_, labels) in enumerate(REGION_GROUPS)]
    region = random.choice(range(NUM_CHOOSABLE_REGIONS))
    sfr = member[region].clone()
    img_mask = sfr.clone()
    for i in range(b):
        n = int(target - sfr[i].sum())
        if n >= 1:
            rho = n / (length - sfr[i].sum())
            covered = sfr[i].clone()
            for g in range(len(REGION_GROUPS)):
                if g == region:
                    continue
                cand = ((member[g][i] - covered) > 0).float()
                idx = cand.nonzero().flatten()
                k = int(torch.round(len(idx) * rho))
                img_mask[i, idx[torch.randperm(len(idx))[:k]]] = 1
                covered += cand
            n2 = int(target - img_mask[i].sum())
            if n2 != 0:
                value = 0 if n2 > 0 else 1
                idx = ((img_mask[i] == value) & (sfr[i] == 0)).nonzero().flatten()
                img_mask[i, idx[torch.randperm(len(idx))[:abs(n2)]]] = 1 - value
        else:
            idx = sfr[i].nonzero().flatten()
            img_mask[i, idx[torch.randperm(len(idx))[:-n]]] = 0
            sfr[i] = img_mask[i]
    return img_mask, sfr


class OriginalLikeCollate:
    def __init__(self, patch: int, ratio: float) -> None:
        self.patch, self.ratio = patch, ratio

    def __call__(self, samples: list[dict]) -> dict:
        images = torch.stack([s["image"] for s in samples])
        maps = torch.stack([s["parsing_map"] for s in samples])
        img_mask, sfr = original_like_masks(maps, self.patch, self.ratio)
        return {"image": images, "img_mask": img_mask, "specific_facial_region_mask": sfr}


def original_like_loader(root: Path, bench: argparse.Namespace) -> DataLoader:
    return DataLoader(OriginalLikeDataset(root, bench.input_size), batch_size=bench.batch_size, shuffle=True,
                      num_workers=0, drop_last=True, collate_fn=OriginalLikeCollate(bench.patch_size, 0.75))


def masked_counts(loader: DataLoader) -> list[int]:
    """The distinct masked-patch counts per sample over one pass (every sample: ``round(0.75 L)``)."""
    return sorted({int(c) for batch in loader for c in batch["img_mask"].sum(dim=1).tolist()})


def finetune_loader(root: Path, bench: argparse.Namespace) -> DataLoader:
    args = augment_parser().parse_args([])
    args.input_size, args.apply_simple_augment = bench.input_size, True
    dataset = LabelledImageFolder(str(root), transform=build_transform(True, args, MEAN, STD))
    return DataLoader(dataset, batch_size=bench.batch_size, shuffle=True, num_workers=0, drop_last=True)


def main(argv: list[str] | None = None) -> dict:
    bench = _parse(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pre, fine = make_data(Path(bench.data_dir or tmp), bench.num_images, bench.input_size)
        ours_loader, base_loader = pretrain_loader(pre, bench), original_like_loader(pre, bench)
        ours = _rate(ours_loader, bench.passes, bench.profile == "pretrain")
        base = _rate(base_loader, bench.passes, bench.profile == "original")
        counts = {"ours": masked_counts(ours_loader), "baseline": masked_counts(base_loader)}
        finetune = _rate(finetune_loader(fine, bench), bench.passes, bench.profile == "finetune")
    cpu, wall = (round(ours[0], 1), round(base[0], 1)), (round(ours[1], 1), round(base[1], 1))
    result = {
        "pretrain": {"ours": {"samples_per_cpu_s": cpu[0], "samples_per_wall_s": wall[0]},
                     "baseline": {"samples_per_cpu_s": cpu[1], "samples_per_wall_s": wall[1]},
                     "ratio_cpu": round(cpu[0] / cpu[1], 3), "ratio_wall": round(wall[0] / wall[1], 3),
                     "masked_per_sample": counts},
        "pretrain_samples_per_s_per_worker": cpu[0],
        "finetune_samples_per_s_per_worker": round(finetune[0], 1),
        "finetune_samples_per_wall_s": round(finetune[1], 1),
        "baseline": "PIL decode, float ToTensor/Resize/Normalize on the host, per-sample CRFR-P",
        "pretrain_simple_augment": bench.simple_augment, "finetune_transform": "simple_augment (RandAugment)",
        "num_images": bench.num_images, "input_size": bench.input_size, "batch_size": bench.batch_size,
        "timed_passes": bench.passes, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
