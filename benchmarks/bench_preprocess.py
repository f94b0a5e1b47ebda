"""Face preprocessing throughput (DfD / pre-training crop: detect, enlarge x1.3, crop) on real photos and on a
video built from them, ours against the original's way; one JSON line.

    python benchmarks/bench_preprocess.py --baseline [--frames 300] [--num_frames 32] [--size 640x480]

Ours: the shipped worker (``crop_video`` job: sampled frames only, seeking over long gaps). Baseline
(``--baseline``): the original's way in one process: every frame decoded up to the last sampled one, dlib
(upsample 1) on every full-size sampled frame. Both write the same crops; the line says whether they are
equal, and on the shared photos (``../shared/faces``) compares every face found (count and crop-box IoU).
Rates are per CPU second of this one process (decode, detection, crop, PNG write), so other load on the
machine moves them little.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fsvfm.preprocess.faces import FaceCropper, square_box
from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.video import SEEK_GAP, frame_name, read_frames, unique_indices

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def photos() -> list[tuple[str, np.ndarray]]:
    if not FACES.is_dir():
        raise SystemExit(f"{FACES} not present: the benchmark runs on those real photos")
    return [(p.name, im) for p in sorted(FACES.glob("*.jpg")) if (im := cv2.imread(str(p))) is not None]


def letterbox(img: np.ndarray, w: int, h: int) -> np.ndarray:
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def build_video(path: Path, n: int, w: int, h: int) -> None:
    """``n`` frames: each photo held for an equal run of frames, panned by one pixel per frame."""
    shots = [letterbox(im, w, h) for _, im in photos()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(n):
        writer.write(np.roll(shots[i * len(shots) // n], i % 8, axis=1))
    writer.release()


def baseline_video(video: Path, out: Path, n: int, num_frames: int) -> None:
    """The original's way: decode every frame, detect on each sampled full-size frame, one process."""
    cropper = FaceCropper()
    out.mkdir(parents=True, exist_ok=True)
    for idx, frame in read_frames(str(video), unique_indices(n, num_frames), seek_gap=None):
        res = cropper.crop(frame) if frame is not None else None
        if res is not None:
            cv2.imwrite(str(out / frame_name("bench", idx)), res[0])


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        np.array_equal(cv2.imread(str(a / x)), cv2.imread(str(b / x))) for x in names)


def iou(a, b) -> float:
    (ax, ay, asz), (bx, by, bsz) = a, b
    ix = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    iy = max(0, min(ay + asz, by + bsz) - max(ay, by))
    return ix * iy / (asz * asz + bsz * bsz - ix * iy)


def photo_boxes(cropper: FaceCropper, images) -> tuple[list[list[tuple]], float]:
    """Crop boxes ``(x1, y1, size)`` of every face of every photo, and the seconds it took."""
    t, out = time.process_time(), []
    for _, im in images:
        rgb = np.ascontiguousarray(im[:, :, ::-1])
        out.append([square_box(f.rect, im.shape[1], im.shape[0]) for f in cropper.ranked(cropper.detect(rgb))])
    return out, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="video length (FF++ videos: about 300-700)")
    ap.add_argument("--num_frames", type=int, default=32, help="sampled frames per video (DfD: 32)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--baseline", action="store_true", help="also run the original's way and compare")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    images = photos()
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    line: dict = {"bench": "preprocess", "settings": {
        "video": f"{args.frames} frames {w}x{h} mp4v from {len(images)} shared photos", "num_frames": args.num_frames,
        "seek_gap": SEEK_GAP, "repeats": args.repeats, "detector": "dlib HOG upsample 1", "processes": 1, "clock": "process CPU seconds",
        "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_1min": round(os.getloadavg()[0], 2)}}
    try:
        video = tmp / "bench.mp4"
        build_video(video, args.frames, w, h)
        sampled = len(unique_indices(args.frames, args.num_frames))
        worker, base_cropper = Worker(Options()), FaceCropper()
        _ = worker.cropper                                      # models load outside the timing

        def ours(r: int) -> float:
            t = time.process_time()
            worker.run(Job("crop_video", str(video), (str(tmp / f"ours{r}"),), "bench", args.num_frames))
            return time.process_time() - t

        def base(r: int) -> float:
            t = time.process_time()
            baseline_video(video, tmp / f"baseline{r}", args.frames, args.num_frames)
            return time.process_time() - t
        # CPU seconds of this process, alternating the two, best of --repeats: the machine is shared
        times: dict[str, list[float]] = {"ours": [], "baseline": [], "ours_photos": [], "baseline_photos": []}
        for r in range(args.repeats):
            times["ours"].append(ours(r))
            boxes, secs = photo_boxes(worker.cropper, images)
            times["ours_photos"].append(secs)
            if args.baseline:
                times["baseline"].append(base(r))
                base_boxes, secs = photo_boxes(base_cropper, images)
                times["baseline_photos"].append(secs)
        ours_video, ours_photos = sampled / min(times["ours"]), len(images) / min(times["ours_photos"])
        line["ours"] = {"video_frames_per_s": round(ours_video, 2), "photos_per_s": round(ours_photos, 2)}
        if args.baseline:
            base_video, base_photos = sampled / min(times["baseline"]), len(images) / min(times["baseline_photos"])
            ious = [iou(a, b) for ours_p, base_p in zip(boxes, base_boxes) for a, b in zip(ours_p, base_p)]
            line["baseline"] = {"video_frames_per_s": round(base_video, 2), "photos_per_s": round(base_photos, 2)}
            line["ratio"] = {"video": round(ours_video / base_video, 3), "photos": round(ours_photos / base_photos, 3)}
            line["equal_output"] = {
                "video_crops_identical": same_files(tmp / "ours0", tmp / "baseline0"),
                "video_crops": len(list((tmp / "ours0").glob("*.png"))), "video_sampled": sampled,
                "photo_faces_ours": sum(map(len, boxes)), "photo_faces_baseline": sum(map(len, base_boxes)),
                "photos_same_face_count": sum(len(a) == len(b) for a, b in zip(boxes, base_boxes)),
                "photos": len(images), "min_crop_box_iou": round(min(ious), 4) if ious else None}
        print(json.dumps(line))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
