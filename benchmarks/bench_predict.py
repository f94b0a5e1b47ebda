"""``fsvfm.predict`` throughput (faces/s) over the shared photos and over a face video built from them, ours
against today's serial way, in one run; one JSON line.

    python benchmarks/bench_predict.py                      # ViT-B/16 (random weights), 224, batch 32
    python benchmarks/bench_predict.py --photos 2 --frames 20 --num_frames 3 --rounds 1 --input_size 32 \\
        --model_kwargs '{"patch_size": 8, "depth": 1}'      # smoke

Ours: ``Detector.predict_many`` (faces of consecutive inputs batched together for the network; decoding,
detection and cropping in a background thread; long gaps between sampled frames seeked). Baseline: one input
at a time, every video frame decoded up to the last sampled one, detection then scoring of that input's faces.
Both use the same ``Detector`` (the DfD crop: dlib HOG upsample 1, square x1.3 box; the evaluation
transform), so the line also says whether they found the same boxes and the largest score difference (the
run fails above 1e-6). Rates are faces per CPU second of this process (all its threads) and per wall second,
summed over ``--rounds`` interleaved rounds; ``network_only_faces_per_cpu_s`` is the model alone on one full
batch per round (the ceiling of both ways). The model has random weights (nothing is downloaded).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_preprocess import FACES, photo_video
from bench_preprocess import photos as shared_photos

from fsvfm.data.finetune import build_transform
from fsvfm.predict import Detector, expand_inputs, input_type
from fsvfm.preprocess.video import SEEK_GAP, frame_count, read_frames
from fsvfm.registry import create_model
from fsvfm.util.args import parse_model_kwargs
from fsvfm.util.images import read_bgr
from fsvfm.util.naming import DFD_VOCABULARY

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOLERANCE = 1e-6


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16")
    ap.add_argument("--model_kwargs", default="", help="JSON overrides of the model (smoke: a tiny ViT)")
    ap.add_argument("--input_size", type=int, default=224)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--photos", type=int, default=None, help="the first N shared photos (default all)")
    ap.add_argument("--frames", type=int, default=750, help="video length (30 s at 25 fps)")
    ap.add_argument("--num_frames", type=int, default=16, help="frames sampled per video")
    ap.add_argument("--size", default="640x480", help="video frame size WxH")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both ways")
    return ap.parse_args(argv)


def make_detector(bench: argparse.Namespace) -> Detector:
    torch.manual_seed(0)
    kwargs = parse_model_kwargs(bench.model_kwargs)
    model = create_model(bench.model, num_classes=2, img_size=bench.input_size, **kwargs)
    transform = build_transform(False, Namespace(input_size=bench.input_size, apply_simple_augment=False),
                                IMAGENET_MEAN, IMAGENET_STD)
    return Detector(model, transform, device="cpu", num_frames=bench.num_frames, batch_size=bench.batch_size,
                    info={"classes": DFD_VOCABULARY})


def baseline_faces(det: Detector, paths: list[str]) -> list[tuple[list, np.ndarray]]:
    """Today's serial way: per input, decode (every frame up to the last sampled one), detect, then score."""
    out = []
    for path in paths:
        if input_type(path) == "image":
            frames = [read_bgr(path)]
        else:
            wanted = det.frame_indices(frame_count(path))
            frames = [f for _, f in read_frames(path, wanted, seek_gap=None) if f is not None]
        faces = [face for bgr in frames for face in det.faces_of(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))]
        out.append(([list(f.box) for f in faces], det.score_crops([f.image for f in faces])))
    return out


def our_faces(det: Detector, paths: list[str]) -> list[tuple[list, np.ndarray]]:
    names = det.classes.names
    return [([f["box"] for f in r["faces"]], np.array([[f["scores"][n] for n in names] for f in r["faces"]]))
            for r in det.predict_many(paths)]


def _timed(fn, *args) -> tuple[list, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def _compare(a: list[tuple[list, np.ndarray]], b: list[tuple[list, np.ndarray]]) -> tuple[bool, float]:
    same_boxes = [boxes for boxes, _ in a] == [boxes for boxes, _ in b]
    diffs = [float(np.abs(pa - pb).max()) for (_, pa), (_, pb) in zip(a, b) if len(pa) and len(pa) == len(pb)]
    return same_boxes, max(diffs, default=0.0)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    bench = _parse(argv)
    if not FACES.is_dir():
        raise SystemExit(f"{FACES} not present: the benchmark runs on those real photos")
    photos = expand_inputs([FACES])[:bench.photos]
    w, h = map(int, bench.size.split("x"))
    det = make_detector(bench)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        video = Path(tmp) / "faces.mp4"
        photo_video(video, shared_photos(), bench.frames, w, h)
        cases = {"photos": photos, "video": [str(video)]}
        det.score_crops([np.zeros((64, 64, 3), np.uint8)] * min(bench.batch_size, 2))  # first-call costs
        ways = {"ours": our_faces, "baseline": baseline_faces}
        totals = {(way, case): [0, 0.0, 0.0] for way in ways for case in cases}  # faces, CPU s, wall s
        results: dict = {}
        crops = [torch.rand(3, bench.input_size, bench.input_size) for _ in range(bench.batch_size)]
        network = [0, 0.0]  # faces, CPU s of the network alone: the floor both ways share
        for r in range(bench.rounds):
            _, cpu, _ = _timed(det._score, crops)
            network[0] += len(crops)
            network[1] += cpu
            order = list(ways) if r % 2 else list(ways)[::-1]  # alternate who goes first
            for case, paths in cases.items():
                for way in order:
                    faces, cpu, wall = _timed(ways[way], det, paths)
                    results[way, case] = faces
                    t = totals[way, case]
                    t[0] += sum(len(boxes) for boxes, _ in faces)
                    t[1] += cpu
                    t[2] += wall

    def rates(way: str, names) -> dict:
        n, cpu, wall = (sum(totals[way, c][k] for c in names) for k in range(3))
        return {"faces": n, "faces_per_cpu_s": round(n / cpu, 3), "faces_per_wall_s": round(n / wall, 3)}

    groups = {**{c: [c] for c in cases}, "all": list(cases)}
    line: dict = {"bench": "predict"}
    for way in ways:
        line[way] = {g: rates(way, names) for g, names in groups.items()}
    line["ratio"] = {g: {"cpu": round(line["ours"][g]["faces_per_cpu_s"] / line["baseline"][g]["faces_per_cpu_s"], 3),
                         "wall": round(line["ours"][g]["faces_per_wall_s"] / line["baseline"][g]["faces_per_wall_s"], 3)}
                     for g in groups}
    line["network_only_faces_per_cpu_s"] = round(network[0] / network[1], 3)
    checks = [_compare(results["ours", c], results["baseline", c]) for c in cases]
    line["same_boxes"] = all(same for same, _ in checks)
    line["max_abs_score_diff"] = max(diff for _, diff in checks)
    line["settings"] = {
        "model": bench.model, "model_kwargs": bench.model_kwargs or None, "weights": "random (seed 0)",
        "input_size": bench.input_size, "batch_size": bench.batch_size, "precision": "fp32", "device": "cpu",
        "photos": len(photos), "video": f"{bench.frames} frames {w}x{h} mp4v from the shared photos",
        "num_frames": bench.num_frames, "seek_gap": SEEK_GAP, "rounds": bench.rounds,
        "detector": "dlib HOG upsample 1", "torch_threads": torch.get_num_threads(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"), "clock": "process CPU s (all threads) and wall s"}
    line["uptime"] = _uptime()
    print(json.dumps(line), flush=True)
    if not line["same_boxes"] or line["max_abs_score_diff"] > TOLERANCE:
        print(f"ours and the baseline differ: same boxes {line['same_boxes']}, largest score difference "
              f"{line['max_abs_score_diff']:.3g} (allowed {TOLERANCE})", file=sys.stderr)
        sys.exit(1)
    return line


if __name__ == "__main__":
    main()
