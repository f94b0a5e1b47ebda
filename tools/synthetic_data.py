"""Generated face-like images with LaPa-style parsing maps, for tests, benchmarks and trying the programs
without data. Not part of the package (nothing in ``fsvfm`` imports it).

    python tools/synthetic_data.py pretrain /tmp/ds --n 16      # images/ + parsing_maps/
    python tools/synthetic_data.py fas /tmp/fas_tree --n_videos 3 --size 64   # every FAS domain with lists

Each face is drawn from a few random ellipses and polygons, so every CRFR-P group (fsvfm.masking) is
present with realistic proportions (skin, hair, brows, eyes, nose, lips, background) while the
geometry (position, size, rotation, hair, open mouth) and the colours vary from sample to sample.
Labels follow LaPa: 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 upper lip,
8 inner mouth, 9 lower lip, 10 hair.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NUM_LAPA_LABELS = 11


def _box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _draw_eye_region(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                     a: float, b: float) -> None:
    """Eyes (4 image-left / 5 image-right) and eyebrows (2 / 3) above them."""
    eye_y = cy - b * rng.uniform(0.12, 0.22)
    dx = a * rng.uniform(0.34, 0.46)
    eye_rx = a * rng.uniform(0.16, 0.24)
    eye_ry = eye_rx * rng.uniform(0.35, 0.55)
    brow_y = eye_y - b * rng.uniform(0.13, 0.2)
    brow_rx, brow_ry = eye_rx * rng.uniform(1.1, 1.4), max(1.0, b * rng.uniform(0.025, 0.05))
    for side, eye_label, brow_label in ((-1, 4, 2), (1, 5, 3)):
        ex = cx + side * dx
        draw.ellipse(_box(ex, eye_y, eye_rx, eye_ry), fill=eye_label)
        draw.ellipse(_box(ex, brow_y, brow_rx, brow_ry), fill=brow_label)


def _draw_nose_and_mouth(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                         a: float, b: float) -> None:
    """Nose (6) as a triangle; upper lip (7), optional inner mouth (8), lower lip (9)."""
    top = cy - b * rng.uniform(0.05, 0.12)
    base = cy + b * rng.uniform(0.14, 0.24)
    half = a * rng.uniform(0.1, 0.16)
    draw.polygon([(cx, top), (cx - half, base), (cx + half, base)], fill=6)
    mouth_y = cy + b * rng.uniform(0.4, 0.5)
    mouth_rx = a * rng.uniform(0.28, 0.42)
    lip = max(1.0, b * rng.uniform(0.035, 0.06))
    gap = lip * rng.uniform(0.6, 1.4) if rng.random() < 0.6 else 0.0
    draw.ellipse(_box(cx, mouth_y - gap / 2 - lip / 2, mouth_rx, lip), fill=7)
    draw.ellipse(_box(cx, mouth_y + gap / 2 + lip / 2, mouth_rx * 0.9, lip), fill=9)
    if gap > 0:
        draw.ellipse(_box(cx, mouth_y, mouth_rx * 0.8, gap / 2 + 0.5), fill=8)


def draw_parsing_map(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One random face layout as a label map, uint8 [size, size] with values 0..10."""
    s = float(size)
    cx, cy = s * (0.5 + rng.uniform(-0.08, 0.08)), s * (0.55 + rng.uniform(-0.06, 0.06))
    a = s * rng.uniform(0.3, 0.38)
    b = a * rng.uniform(1.1, 1.3)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    has_hair = rng.random() < 0.85
    if has_hair:
        draw.ellipse(_box(cx, cy - 0.22 * b, a * rng.uniform(1.08, 1.25), b * rng.uniform(0.85, 1.0)), fill=10)
    draw.ellipse(_box(cx, cy, a, b), fill=1)
    if has_hair and rng.random() < 0.6:  # fringe over the forehead
        draw.chord(_box(cx, cy, a, b), start=180 + rng.uniform(0, 25), end=360 - rng.uniform(0, 25), fill=10)
        draw.ellipse(_box(cx, cy + 0.05 * b, a * 0.98, b * 0.93), fill=1)
    _draw_eye_region(draw, rng, cx, cy, a, b)
    _draw_nose_and_mouth(draw, rng, cx, cy, a, b)
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.NEAREST, center=(cx, cy), fillcolor=0)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Per-image colours for the 11 labels, float [11, 3] in 0..255."""
    skin = np.array([rng.uniform(120, 240), rng.uniform(80, 200), rng.uniform(60, 170)])
    hair = rng.uniform(10, 160) * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.9)])
    pal = np.zeros((NUM_LAPA_LABELS, 3))
    pal[0] = rng.uniform(0, 255, size=3)
    pal[1] = skin
    pal[2] = pal[3] = hair * 0.7
    pal[4] = pal[5] = rng.uniform(20, 90, size=3)
    pal[6] = skin * 0.88
    pal[7] = pal[9] = np.array([rng.uniform(150, 220), rng.uniform(50, 110), rng.uniform(60, 120)])
    pal[8] = np.array([90.0, 20.0, 30.0])
    pal[10] = hair
    return pal


def render_face(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour a label map into an RGB image (uint8 [H, W, 3]) with shading and noise."""
    h, w = labels.shape
    rgb = _palette(rng)[labels]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1.0 + 0.25 * (rng.uniform(-1, 1) * (xx - 0.5) + rng.uniform(-1, 1) * (yy - 0.5))
    rgb = rgb * light[..., None] + rng.normal(0.0, 6.0, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def synthetic_parsing_maps(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` random label maps, uint8 [n, size, size] (no images; for masking tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    return np.stack([draw_parsing_map(rng, size) for _ in range(n)])


def make_synthetic_pretrain_dataset(root: str | os.PathLike, n: int, size: int = 224, seed: int = 0) -> Path:
    """Write ``n`` generated faces as a pre-training data set and return ``root``.

    Layout (as produced by face parsing): ``root/images/<stem>.png`` (RGB) and
    ``root/parsing_maps/<stem>.npy`` (int8, shape (1, size, size)).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "parsing_maps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        labels = draw_parsing_map(rng, size)
        stem = f"synthetic_{seed}_{i:05d}"
        Image.fromarray(render_face(labels, rng)).save(root / "images" / f"{stem}.png")
        np.save(root / "parsing_maps" / f"{stem}.npy", labels.astype(np.int8)[None])
    return root


def render_fas_face(rng: np.random.Generator, size: int, spoof: bool, tint: np.ndarray) -> np.ndarray:
    """A generated face, RGB uint8 [size, size, 3]; spoofs are a recaptured look (lower contrast, a
    blue-ish cast and horizontal moire stripes), so live and spoof are learnably different."""
    rgb = render_face(draw_parsing_map(rng, size), rng).astype(np.float64) * tint
    if spoof:
        stripes = 25.0 * np.sin(np.arange(size) * rng.uniform(1.2, 1.8))[:, None, None]
        rgb = 0.6 * rgb + 50.0 + stripes + np.array([-20.0, 0.0, 30.0])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_fas_list(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _fas_domain(root: Path, group: str, domain: str, n_videos: int, size: int, rng: np.random.Generator,
                splits: tuple[str, ...]) -> None:
    """Frames and list files of one domain: MCIO videos have ``_frame0/_frame1`` frames (test lists
    name ``frame0`` only, as the originals), WCS items are single images."""
    tint = rng.uniform(0.8, 1.2, size=3)
    for split in splits:
        for cls in ("real", "fake"):
            lines = []
            for i in range(n_videos):
                stem = f"{domain}/{split}/{cls}/{domain}_{cls}_{split}_{i}" if domain != "celeb" else \
                    f"celeb/{cls}/celeb_{cls}_{i}"
                names = [f"{stem}_frame{k}.png" for k in (0, 1)] if group == "MCIO" else [f"{stem}.png"]
                for name in names:
                    out = root / group / "frame" / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(render_fas_face(rng, size, cls == "fake", tint)).save(out)
                lines += names[:1] if split == "test" else names
            _write_fas_list(root / group / "txt" / f"{domain}_{cls}_{split}.txt", lines)
            if split == "train":
                _write_fas_list(root / group / "txt" / f"{domain}_{cls}_shot.txt", lines)


def make_synthetic_fas_tree(root: str | os.PathLike, n_videos: int = 3, size: int = 32, seed: int = 0) -> Path:
    """Write a small FAS tree under ``root`` (the ``--fas_data_root`` layout) and return ``root``.

    ``MCIO/{frame,txt}``: casia, replay, oulu, msu (train, test and shot lists) and celeb (train only);
    ``WCS/{frame,txt}``: cefa, surf, wmca. ``n_videos`` videos (or WCS images) per domain, split and class.
    """
    from fsvfm.data.fas import MCIO_DOMAINS, WCS_DOMAINS  # torch and OpenCV only for FAS trees
    root = Path(root)
    rng = np.random.default_rng(seed)
    for domain in MCIO_DOMAINS:  # celeb last, as CelebA-Spoof: training lists only
        _fas_domain(root, "MCIO", domain, n_videos, size, rng, ("train",) if domain == "celeb" else ("train", "test"))
    for domain in WCS_DOMAINS:
        _fas_domain(root, "WCS", domain, n_videos, size, rng, ("train", "test"))
    return root


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Write generated faces: a pre-training set or a FAS tree.")
    p.add_argument("kind", choices=("pretrain", "fas"))
    p.add_argument("root", help="output folder (created)")
    p.add_argument("--n", type=int, default=16, help="pretrain: number of faces")
    p.add_argument("--n_videos", type=int, default=3, help="fas: videos (or images) per domain, split and class")
    p.add_argument("--size", type=int, default=None, help="image side (default: 224 pretrain, 32 fas)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.kind == "pretrain":
        root = make_synthetic_pretrain_dataset(args.root, args.n, args.size or 224, args.seed)
        print(f"wrote {args.n} faces with parsing maps under {root}")
    else:
        root = make_synthetic_fas_tree(args.root, args.n_videos, args.size or 32, args.seed)
        print(f"wrote a FAS tree (MCIO and WCS frames and list files) under {root}")
    return root


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
    main()
