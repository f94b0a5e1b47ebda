"""Face preprocessing throughput, ours against the original's way in one run; one JSON line.

    python benchmarks/bench_preprocess.py [--frames 300] [--num_frames 32] [--size 640x480] [--repeats 3]

Four cases, each run both ways in alternating rounds on the same inputs (one process):

* ``video_face``: an FF++-like video (one face, panning) built from a shared photo; DfD crop of 32 sampled frames.
* ``video_photos``: a video of every shared photo in turn (cuts, group photos with 37-px faces, a frame with none).
* ``photos``: the pre-training crop of every shared photo (``../shared/faces``).
* ``fas``: the FAS two-chip job (MTCNN, aligned 224 chip) on the face video.

Ours is the shipped worker: sampled frames only (seeking over long gaps) and, from the second sampled frame of a
video on, the dlib pyramid searched only for faces down to 0.7x the last frame's smallest one; FAS decodes only
from each target frame on. The original's way: every frame decoded up to the last one used, dlib (upsample 1)
searching every full-size sampled frame for faces of every size, MTCNN on every frame from a target on.
Rates are per CPU second of this process (``time.process_time``: decode, detection, crop, PNG write), so other
load on the machine moves them little; wall-clock rates are printed too. Equal output: the faces found in each
sampled frame and photo (count, crop-box IoU against the original's) and whether the written files are identical.
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

from fsvfm.preprocess import fas as fas_jobs
from fsvfm.preprocess.align import extract_image_chip
from fsvfm.preprocess.faces import TRACK_SHRINK, FaceCropper, smallest_side, square_box
from fsvfm.preprocess.jobs import Job, Options, Worker
from fsvfm.preprocess.mtcnn import FACTOR, MIN_FACE_SIZE, THRESHOLDS
from fsvfm.preprocess.video import SEEK_GAP, frame_count, frame_name, read_frames, unique_indices

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
FACE_PHOTO = "Tom_Cruise_avp_2014_4.jpg"


def photos() -> list[tuple[str, np.ndarray]]:
    if not FACES.is_dir():
        raise SystemExit(f"{FACES} not present: the benchmark runs on those real photos")
    return [(p.name, im) for p in sorted(FACES.glob("*.jpg")) if (im := cv2.imread(str(p))) is not None]


def letterbox(img: np.ndarray, w: int, h: int, scale: float = 1.0) -> np.ndarray:
    s = min(w / img.shape[1], h / img.shape[0]) * scale
    small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def write_video(path: Path, frames, w: int, h: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()


def photo_video(path: Path, images, n: int, w: int, h: int) -> None:
    """``n`` frames: each photo held for an equal run of frames, panned by one pixel per frame."""
    shots = [letterbox(im, w, h) for _, im in images]
    write_video(path, (np.roll(shots[i * len(shots) // n], i % 8, axis=1) for i in range(n)), w, h)


def face_video(path: Path, image: np.ndarray, n: int, w: int, h: int) -> None:
    """``n`` frames of one face at about a third of the frame height, panning 60 px to and fro."""
    shot = letterbox(image, w, h, 0.8)
    write_video(path, (np.roll(shot, int(30 * np.sin(i / 20)), axis=1) for i in range(n)), w, h)


def baseline_video(cropper: FaceCropper, video: Path, out: Path, num_frames: int) -> None:
    """The original's way: decode every frame, search each sampled full-size frame in full, one process."""
    out.mkdir(parents=True, exist_ok=True)
    for idx, frame in read_frames(str(video), unique_indices(frame_count(str(video)), num_frames), seek_gap=None):
        res = cropper.crop(frame) if frame is not None else None
        if res is not None:
            cv2.imwrite(str(out / frame_name("bench", idx)), res[0])


def video_boxes(cropper: FaceCropper, video: Path, num_frames: int, tracked: bool) -> list[list[tuple]]:
    """Crop boxes of every face found in each sampled frame, searched in full or as the worker does."""
    out, prev = [], None
    for _, frame in read_frames(str(video), unique_indices(frame_count(str(video)), num_frames)):
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        faces = cropper.detect_tracked(rgb, prev) if tracked else cropper.detect(rgb)
        prev = smallest_side(faces)
        out.append([square_box(f.rect, rgb.shape[1], rgb.shape[0]) for f in faces])
    return out


def photo_crops(cropper: FaceCropper, images, out: Path) -> list[list[tuple]]:
    """The pre-training crop of every photo (first face), and the crop boxes of every face found."""
    out.mkdir(parents=True, exist_ok=True)
    boxes = []
    for name, im in images:
        rgb = np.ascontiguousarray(im[:, :, ::-1])
        faces = cropper.detect(rgb)
        boxes.append([square_box(f.rect, im.shape[1], im.shape[0]) for f in faces])
        crops = cropper.crops(im, 1, faces)
        if crops:
            cv2.imwrite(str(out / f"{Path(name).stem}.png"), crops[0][0])
    return boxes


def baseline_fas(detector, video: Path, out: Path, name: str, face_size: int, padding: float) -> None:
    """The original's two chips: every frame decoded in order from the start; from each target frame on,
    MTCNN on every frame until a face is found (one frame may serve both targets)."""
    out.mkdir(parents=True, exist_ok=True)
    total = frame_count(str(video))
    targets, paths = fas_jobs.two_frame_targets(total), fas_jobs.fas_frame_names(name)
    pending = {0, 1}
    for idx, frame in read_frames(str(video), range(total), seek_gap=None):
        due = [k for k in pending if targets[k] <= idx]
        if not due or frame is None:
            continue
        face = detector.select(np.ascontiguousarray(frame[:, :, ::-1]))
        if face is None:
            continue
        for k in due:
            cv2.imwrite(str(out / paths[k]), extract_image_chip(frame, face.points, face_size, padding))
            pending.discard(k)
        if not pending:
            return


def same_files(a: Path, b: Path) -> tuple[int, int]:
    """(files with the same name in both folders, of those the pixel-identical ones)."""
    names = sorted({p.name for p in a.glob("*.png")} & {p.name for p in b.glob("*.png")})
    return len(names), sum(np.array_equal(cv2.imread(str(a / x)), cv2.imread(str(b / x))) for x in names)


def iou(a, b) -> float:
    (ax, ay, asz), (bx, by, bsz) = a, b
    ix = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    iy = max(0, min(ay + asz, by + bsz) - max(ay, by))
    return ix * iy / (asz * asz + bsz * bsz - ix * iy)


def compare_boxes(ours: list[list[tuple]], base: list[list[tuple]]) -> dict:
    """Faces found per frame/photo both ways, and the lowest IoU of each of the original's faces with ours."""
    ious = [max((iou(a, b) for a in o), default=0.0) for o, bs in zip(ours, base) for b in bs]
    return {"items": len(base), "same_face_count": sum(len(o) == len(b) for o, b in zip(ours, base)),
            "faces_ours": sum(map(len, ours)), "faces_baseline": sum(map(len, base)),
            "min_crop_box_iou": round(min(ious), 4) if ious else None}


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="video length (FF++ videos: about 300-700)")
    ap.add_argument("--num_frames", type=int, default=32, help="sampled frames per video (DfD: 32)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds of each case; the best is kept")
    ap.add_argument("--skip_fas", action="store_true", help="leave out the FAS (MTCNN) case")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    images = photos()
    load_start = [round(x, 2) for x in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        videos = {"video_face": tmp / "face.mp4", "video_photos": tmp / "photos.mp4"}
        face_video(videos["video_face"], dict(images)[FACE_PHOTO], args.frames, w, h)
        photo_video(videos["video_photos"], images, args.frames, w, h)
        sampled = len(unique_indices(args.frames, args.num_frames))
        opts = Options()
        worker, base_cropper = Worker(opts), FaceCropper()
        _ = worker.cropper                                      # models load outside the timing
        cases = {}
        for key, video in videos.items():
            cases[key] = (sampled, lambda r, v=video, k=key: worker.run(
                              Job("crop_video", str(v), (str(tmp / f"{k}_ours{r}"),), "bench", args.num_frames)),
                          lambda r, v=video, k=key: baseline_video(base_cropper, v, tmp / f"{k}_base{r}",
                                                                  args.num_frames))
        # photos: the worker's crop_image path is the full search (no earlier frame to take a size from)
        cases["photos"] = (len(images), lambda r: photo_crops(worker.cropper, images, tmp / f"photos_ours{r}"),
                           lambda r: photo_crops(base_cropper, images, tmp / f"photos_base{r}"))
        if not args.skip_fas:
            from fsvfm.preprocess.mtcnn import MTCNNDetector
            worker.resource("mtcnn", fas_jobs._detector)          # loaded outside the timing
            base_mtcnn = MTCNNDetector(opts.device, opts.face_select)
            cases["fas"] = (2, lambda r: worker.run(Job("fas_video", str(videos["video_face"]),
                                                        (str(tmp / f"fas_ours{r}"),), "bench")),
                            lambda r: baseline_fas(base_mtcnn, videos["video_face"], tmp / f"fas_base{r}", "bench",
                                                   opts.face_size, opts.chip_padding))
        # alternating rounds (who goes first swaps each round), best CPU and best wall time of each
        times = {(c, s): [] for c in cases for s in ("ours", "baseline")}
        for r in range(args.repeats):
            for c, (_, ours_fn, base_fn) in cases.items():
                order = (("ours", ours_fn), ("baseline", base_fn))
                for side, fn in order if r % 2 == 0 else order[::-1]:
                    times[(c, side)].append(timed(lambda fn=fn, r=r: fn(r)))
        line: dict = {"bench": "preprocess"}
        for side in ("ours", "baseline"):
            line[side] = {clock: {c: round(n / min(t[i] for t in times[(c, side)]), 2) for c, (n, _, _) in cases.items()}
                          for i, clock in enumerate(("cpu", "wall"))}
        line["ratio"] = {clock: {c: round(line["ours"][clock][c] / line["baseline"][clock][c], 3) for c in cases}
                         for clock in ("cpu", "wall")}
        equal = {}
        for key, video in videos.items():
            n_same, n_identical = same_files(tmp / f"{key}_ours0", tmp / f"{key}_base0")
            equal[key] = {**compare_boxes(video_boxes(worker.cropper, video, args.num_frames, True),
                                          video_boxes(base_cropper, video, args.num_frames, False)),
                          "crops_ours": len(list((tmp / f"{key}_ours0").glob("*.png"))),
                          "crops_baseline": len(list((tmp / f"{key}_base0").glob("*.png"))),
                          "crops_same_name": n_same, "crops_identical": n_identical}
        n_same, n_identical = same_files(tmp / "photos_ours0", tmp / "photos_base0")
        equal["photos"] = {**compare_boxes(photo_crops(worker.cropper, images, tmp / "check_ours"),
                                           photo_crops(base_cropper, images, tmp / "check_base")),
                           "crops_same_name": n_same, "crops_identical": n_identical}
        if "fas" in cases:
            n_same, n_identical = same_files(tmp / "fas_ours0", tmp / "fas_base0")
            equal["fas"] = {"chips_same_name": n_same, "chips_identical": n_identical,
                            "landmark_tolerance_px": 0}
        line["equal_output"] = equal
        line["settings"] = {
            "video_face": f"{args.frames} frames {w}x{h} mp4v, {FACE_PHOTO} at 0.8x the frame height, panning",
            "video_photos": f"{args.frames} frames {w}x{h} mp4v from {len(images)} shared photos",
            "photos": f"{len(images)} photos of {FACES.name}/", "num_frames": args.num_frames,
            "seek_gap": SEEK_GAP, "track_shrink": TRACK_SHRINK, "repeats": args.repeats,
            "detector": "dlib HOG upsample 1", "mtcnn": {"thresholds": list(THRESHOLDS), "min_face_size": MIN_FACE_SIZE,
                                                         "factor": FACTOR},
            "processes": 1, "clock": "best of repeats, process CPU seconds (cpu) and wall seconds (wall)",
            "units": "frames/s (videos), photos/s, chips/s (fas)",
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()}
        line["uptime_load"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(line))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
