"""Throughput of the face preprocessing on a video built from real photos.

    python benchmarks/bench_preprocess.py [--frames 60] [--size 640x480] [--workers 2]

Prints frames/s for unaligned and aligned face extraction (one process, then ``--workers``
processes on copies of the video) and maps/s for the offline landmark parser.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage.data import astronaut

from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.parse_landmarks import LandmarkParser
from fsvfm.preprocess.runner import run_jobs

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def photos() -> list[np.ndarray]:
    """BGR photos: the astronaut plus the shared real faces when the folder is there."""
    out = [np.ascontiguousarray(astronaut()[:, :, ::-1])]
    if FACES.is_dir():
        out += [im for p in sorted(FACES.glob("*.jpg")) if (im := cv2.imread(str(p))) is not None]
    return out


def letterbox(img: np.ndarray, w: int, h: int) -> np.ndarray:
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def build_video(path: Path, n: int, w: int, h: int) -> None:
    frames = [letterbox(p, w, h) for p in photos()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(n):
        writer.write(frames[i % len(frames)])
    writer.release()


def time_video(video: Path, out: Path, opts: Options, n: int) -> tuple[float, dict]:
    worker = Worker(opts)
    if opts.align:
        _ = worker.cropper.predictor                      # load the 68-point model outside the timing
    t = time.perf_counter()
    result = worker.run(Job("crop_video", str(video), (str(out),), "bench", n))
    return n / (time.perf_counter() - t), dict(result.counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        video = tmp / "bench.mp4"
        build_video(video, args.frames, w, h)
        print(f"video: {args.frames} frames {w}x{h} from {len(photos())} real photos")
        for name, opts in (("unaligned", Options()), ("aligned", Options(align=True))):
            fps, counts = time_video(video, tmp / name, opts, args.frames)
            print(f"{name:9s} extraction, 1 process: {fps:6.1f} frames/s  {counts}")
        copies = [tmp / f"copy{i}.mp4" for i in range(args.workers * 2)]
        for c in copies:
            shutil.copyfile(video, c)
        jobs = [Job("crop_video", str(c), (str(tmp / "pool"),), c.stem, args.frames) for c in copies]
        t = time.perf_counter()
        run_jobs(jobs, Options(), workers=args.workers, desc="pool")
        fps = len(copies) * args.frames / (time.perf_counter() - t)
        print(f"unaligned extraction, {args.workers} processes: {fps:6.1f} frames/s")
        crops = [cv2.resize(cv2.imread(str(p)), (224, 224), interpolation=cv2.INTER_CUBIC)[:, :, ::-1].copy()
                 for p in sorted((tmp / "unaligned").glob("*.png"))]
        parser = LandmarkParser()
        parser.parse(crops[0])                           # loads the 68-point model once
        t = time.perf_counter()
        found = sum(parser.parse(c) is not None for c in crops)
        print(f"landmark parser: {len(crops) / (time.perf_counter() - t):6.1f} maps/s "
              f"({found}/{len(crops)} crops parsed)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
