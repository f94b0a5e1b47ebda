"""Score the faces of your own images and videos with a fine-tuned checkpoint.

    python -m fsvfm.predict --checkpoint CKPT photo.jpg photos/ clip.mp4 [--output results.json|results.csv]
    python -m fsvfm.predict --checkpoint hf://Wolowolo/fsfm-3c/<path>/checkpoint-min_val_loss.pth photo.jpg

**Class 1 = real**: ``score_real`` = P(real) = softmax(logits)[1], ``score_fake`` = P(fake) = softmax(logits)[0],
as in the test programs. Every face of an image (or of each sampled video frame) is detected and cropped
exactly as the training data of the checkpoint's task was (DfD/DiFF: dlib HOG, upsample 1, square x1.3 box,
native resolution; ``fsvfm.preprocess.faces``; FAS: the most confident MTCNN faces, each as the 5-point aligned
224x224 chip of the FAS preprocessing, ``fsvfm.preprocess.align``), then resized and normalised with the test
programs' evaluation transform (FAS: as its test frames). Videos are sampled like the test data (``--num_frames 32`` uniformly, first and last
frame included) or every K-th frame (``--every K``).

One record per input::

    {"path": str | None, "type": "image" | "video",
     "faces": [{"frame": int | None, "box": [x1, y1, x2, y2], "detector_score": float | None,
                "score_real": float, "score_fake": float}, ...],
     "score_real": float | None,   # mean over all faces (and frames): the test protocol's video score
     "error": str | None}          # e.g. unreadable file, no face found

``box`` is the square crop that was scored (pixel coordinates, x2/y2 exclusive); ``frame`` is the video
frame index (None for still images). Python API::

    from fsvfm.predict import Detector
    det = Detector.from_checkpoint("checkpoint-min_val_loss.pth", device="cpu")
    record = det.predict("photo.jpg")          # or a video path, a PIL image, an RGB uint8 array
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from PIL import Image

from fsvfm.preprocess.faces import FaceCropper, square_crop
from fsvfm.preprocess.jobs import Options
from fsvfm.preprocess.video import VIDEO_EXTENSIONS, frame_count, read_frames, unique_indices
from fsvfm.util.amp import AMP_CHOICES, autocast, resolve_amp
from fsvfm.util.checkpoint import args_dict, load_checkpoint, model_warnings, resolve_checkpoint_path
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import UsageError
from fsvfm.util.fileio import atomic_path, atomic_write_image, atomic_write_text
from fsvfm.util.naming import DFD_VOCABULARY, IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

REAL, FAKE = DFD_VOCABULARY.positive, DFD_VOCABULARY.names.index("fake")  # class indices of the DfD heads

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


# ---------------------------------------------------------------------------------- face crops
@dataclass
class FaceCrop:
    """One face to score: ``box`` (x1, y1, x2, y2) in the input, detector score, RGB crop [h, w, 3] uint8."""

    box: tuple[int, int, int, int]
    detector_score: float | None
    image: np.ndarray


CropFn = Callable[[np.ndarray], "list[FaceCrop]"]


def dlib_square_crops() -> CropFn:
    """The DfD/DiFF training crop (spec 1.1): every dlib face, square x1.3 box, native resolution, in
    dlib's order (highest detector score first; the preprocessing kept only the first)."""
    opts = Options()  # the preprocessing defaults: face_scale 1.3, upsample 1
    cropper = FaceCropper(opts.face_scale, opts.upsample)

    def crop(rgb: np.ndarray) -> list[FaceCrop]:
        faces = []
        for face in cropper.detect(rgb):
            cut = square_crop(rgb, face.rect, cropper.face_scale)
            if cut is not None:
                image, (x1, y1, size) = cut
                faces.append(FaceCrop((x1, y1, x1 + size, y1 + size), face.score, image))
        return faces
    return crop


def whole_image_crops() -> CropFn:
    """``--no_detect``: the input is already a face crop."""
    return lambda rgb: [FaceCrop((0, 0, rgb.shape[1], rgb.shape[0]), None, rgb)]


def fas_aligned_crops() -> CropFn:
    """The FAS training chip (spec 1.5.2): every MTCNN face (most confident first; the preprocessing kept the
    first), warped to the ``face_size`` x ``face_size`` chip aligned on its 5 landmarks. ``box`` is MTCNN's box."""
    from fsvfm.preprocess.align import extract_image_chip
    from fsvfm.preprocess.mtcnn import MTCNNDetector
    opts, detector = Options(), MTCNNDetector()

    def crop(rgb: np.ndarray) -> list[FaceCrop]:
        faces = []
        for face in detector.detect(rgb):
            chip = extract_image_chip(rgb, face.points, opts.face_size, opts.chip_padding)
            x1, y1, x2, y2 = (int(round(v)) for v in face.box)
            faces.append(FaceCrop((max(x1, 0), max(y1, 0), min(x2, rgb.shape[1]), min(y2, rgb.shape[0])),
                                  face.prob, chip))
        return faces
    return crop


# Crop modes by name, and the mode each task's training data used; a new task adds its own with
# ``register_crop_mode(name, factory, tasks=(task,))``.
CROP_MODES: dict[str, Callable[[], CropFn]] = {"dlib_square": dlib_square_crops, "whole_image": whole_image_crops}
TASK_CROP_MODES: dict[str, str] = {"DfD": "dlib_square", "DiFF": "dlib_square"}
DEFAULT_TASK = "DfD"


def register_crop_mode(name: str, factory: Callable[[], CropFn], tasks: Sequence[str] = ()) -> None:
    """Add a crop mode (``factory()`` returns a function RGB array -> list of ``FaceCrop``), optionally
    as the mode of ``tasks``."""
    CROP_MODES[name] = factory
    TASK_CROP_MODES.update({t: name for t in tasks})


register_crop_mode("fas_aligned", fas_aligned_crops, tasks=("FAS",))


def crop_mode_for(task: str) -> str:
    if task not in TASK_CROP_MODES:
        raise UsageError(f"no face-crop mode for task {task!r} yet (known: {sorted(TASK_CROP_MODES)}); "
                         "pass --no_detect with ready-made face crops")
    return TASK_CROP_MODES[task]


# ------------------------------------------------------------------------------------- model
def rebuild_classifier(path: str | os.PathLike, apply_simple_augment: bool = False
                       ) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], dict[str, Any]]:
    """The fine-tuned classifier of a checkpoint (local or ``hf://``) and the test programs' evaluation
    transform (PIL image -> [3, S, S]), rebuilt by its task's ``rebuild`` (DfD/DiFF:
    :func:`fsvfm.finetune_setup.load_classifier_from_checkpoint`, as the test programs; FAS:
    :func:`fsvfm.engine_fas.load_fas_from_checkpoint`). A file that names no task is FAS when its weights are
    a FAS network's (the released ``.pth.tar``), else DfD. Returns ``(model in eval mode, transform, info)``."""
    from fsvfm.tasks import TASKS
    local = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint(local)
    stored = args_dict(checkpoint)
    task = checkpoint.get("task") or stored.get("task") or _task_of_weights(checkpoint)
    if task not in TASKS:
        raise UsageError(f"{path}: unknown task {task!r} (known: {sorted(TASKS)})")
    model, transform, built = TASKS[task].rebuild(
        local, checkpoint=checkpoint, apply_simple_augment=apply_simple_augment,
        normalize_from_IMN=stored.get("normalize_from_IMN"))
    info = {"checkpoint": str(path), "model": built["model"], "input_size": built["input_size"], "task": task,
            "warnings": model_warnings(checkpoint),
            "norm_stats": {"mean": built["mean"], "std": built["std"], "source": built["norm_source"]}}
    return model, transform, info


def _task_of_weights(checkpoint: dict) -> str:
    state = checkpoint.get("state_dict", checkpoint.get("model"))
    return "FAS" if isinstance(state, dict) and "backbone.vit.cls_token" in state else DEFAULT_TASK


# ------------------------------------------------------------------------------------ inputs
def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (contiguous) from a PIL image or a uint8 array (gray, RGB or RGBA)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(f"expected an HxW or HxWxC uint8 array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def input_type(path: str | os.PathLike) -> str:
    return "video" if Path(path).suffix.lower() in VIDEO_EXTENSIONS else "image"


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given; folders replaced by their image and video files (recursive, sorted)."""
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            if not found:
                logger.warning("%s: no image or video files in this folder", p)
            out += [str(f) for f in found]
        else:
            out.append(str(p))
    return out


def new_record(path: str | None, kind: str) -> dict[str, Any]:
    return {"path": path, "type": kind, "faces": [], "score_real": None, "error": None}


# ---------------------------------------------------------------------------------- detector
class Detector:
    """Face detection, cropping and scoring with a fine-tuned classifier (class 1 = real).

    ``predict(x)`` returns one record (module docstring); ``predict_many(xs)`` yields them in order and
    batches the faces of consecutive inputs together.
    """

    def __init__(self, model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], *,
                 device: str | torch.device = "cpu", amp: str | None = None, crop_mode: str = "dlib_square",
                 max_faces: int | None = None, num_frames: int | None = 32, every: int | None = None,
                 batch_size: int = 32, info: dict | None = None) -> None:
        if crop_mode not in CROP_MODES:
            raise ValueError(f"unknown crop mode {crop_mode!r}; choose from {sorted(CROP_MODES)}")
        self.device = torch.device(device)
        self.amp = resolve_amp(amp, self.device)
        self.model = model.to(self.device).eval()
        self.transform, self.crop_mode, self.crop = transform, crop_mode, CROP_MODES[crop_mode]()
        self.max_faces, self.num_frames, self.every = max_faces, num_frames, every
        self.batch_size, self.info = batch_size, dict(info or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None, *,
                        amp: str | None = None, crop_mode: str | None = None, detect: bool = True,
                        apply_simple_augment: bool = False, **options: Any) -> Detector:
        """Rebuild the model of a fine-tuned checkpoint (local path or ``hf://``). ``crop_mode`` defaults
        to the checkpoint task's (``detect=False``: inputs are already crops); ``options`` are the
        keyword arguments of ``__init__`` (``max_faces``, ``num_frames``, ``every``, ``batch_size``)."""
        model, transform, info = rebuild_classifier(path, apply_simple_augment)
        mode = "whole_image" if not detect else crop_mode or crop_mode_for(info["task"])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, transform, device=device, amp=amp, crop_mode=mode, info=info, **options)

    # ------------------------------------------------------------------------------- faces
    def faces_of(self, rgb: np.ndarray) -> list[FaceCrop]:
        """The faces of one RGB image [H, W, 3] uint8 (at most ``max_faces``)."""
        return self.crop(rgb)[:self.max_faces]

    def frame_indices(self, count: int) -> list[int]:
        if self.every:
            return list(range(0, count, self.every))
        return unique_indices(count, self.num_frames)

    def _crops(self, item: ImageInput, record: dict) -> Iterator[tuple[int | None, FaceCrop]]:
        """``(frame, face)`` pairs of one input; problems go to ``record['error']``."""
        if not isinstance(item, (str, os.PathLike)):
            yield from ((None, f) for f in self.faces_of(_rgb(item)))
            return
        path = str(item)
        if not os.path.isfile(path):
            record["error"] = "file not found"
            return
        if record["type"] == "image":
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is not None:
                yield from ((None, f) for f in self.faces_of(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                return
            if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
                record["error"] = "cannot read this file as an image"
                return
        count = frame_count(path)  # a video, or a file of unknown type that is not an image
        if count < 0:
            record["error"] = "cannot read this file as an image or a video"
            return
        record["type"] = "video"
        for idx, frame in read_frames(path, self.frame_indices(count)):
            if frame is not None:
                yield from ((idx, f) for f in self.faces_of(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))

    # ------------------------------------------------------------------------------ scoring
    def score_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, C] (column 1 = P(real)) of RGB face crops, in batches."""
        tensors = [self.transform(Image.fromarray(c)) for c in crops]
        return self._score(tensors) if tensors else np.zeros((0, 2))

    @torch.no_grad()
    def _score(self, tensors: list[torch.Tensor]) -> np.ndarray:
        out = []
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(tensors[start:start + self.batch_size]).to(self.device)
            with autocast(self.device, self.amp):
                logits = self.model(batch)
            out.append(logits.float().softmax(dim=-1).cpu().numpy())
        return np.concatenate(out)

    def _flush(self, queue: list[tuple[dict, torch.Tensor]]) -> None:
        if queue:
            probs = self._score([t for _, t in queue])
            for (entry, _), p in zip(queue, probs):
                entry["score_real"], entry["score_fake"] = float(p[REAL]), float(p[FAKE])
            queue.clear()

    def predict_many(self, items: Iterable[ImageInput]) -> Iterator[dict[str, Any]]:
        """One record per input, in order; faces of consecutive inputs share batches."""
        queue: list[tuple[dict, torch.Tensor]] = []
        ready: list[dict] = []
        for item in items:
            is_path = isinstance(item, (str, os.PathLike))
            record = new_record(str(item) if is_path else None, input_type(item) if is_path else "image")
            try:
                for frame, face in self._crops(item, record):
                    tensor = self.transform(Image.fromarray(face.image))
                    entry = {"frame": frame, "box": [int(v) for v in face.box], "detector_score": face.detector_score}
                    record["faces"].append(entry)
                    queue.append((entry, tensor))
                    if len(queue) >= self.batch_size:
                        self._flush(queue)
            except (OSError, ValueError, cv2.error) as e:  # a bad file must not stop the run
                record["error"] = f"{type(e).__name__}: {e}"
            ready.append(record)
            if not queue:
                yield from map(_finish, ready)
                ready = []
        self._flush(queue)
        yield from map(_finish, ready)

    def predict(self, item: ImageInput) -> dict[str, Any]:
        """The record of one image path, video path, PIL image or RGB uint8 array [H, W, 3]."""
        return next(self.predict_many([item]))


def _finish(record: dict) -> dict:
    """Record score = mean face score (the test protocol's video score); no face is an error."""
    if record["faces"]:
        record["score_real"] = float(np.mean([f["score_real"] for f in record["faces"]]))
    elif record["error"] is None:
        record["error"] = "no face found" + (" in the sampled frames" if record["type"] == "video" else "")
    return record


# ------------------------------------------------------------------------------------ outputs
CSV_COLUMNS = ("path", "type", "frame", "x1", "y1", "x2", "y2", "detector_score", "score_real", "score_fake",
               "input_score_real", "error")


def csv_rows(records: Iterable[dict]) -> Iterator[list[Any]]:
    """One row per face; an input without faces gets one row with empty face columns (and its error)."""
    for r in records:
        tail = [r["score_real"], r["error"]]
        for f in r["faces"]:
            yield [r["path"], r["type"], f["frame"], *f["box"], f["detector_score"], f["score_real"],
                   f["score_fake"], *tail]
        if not r["faces"]:
            yield [r["path"], r["type"], None, None, None, None, None, None, None, None, *tail]


def write_output(path: str | os.PathLike, records: list[dict]) -> None:
    """``.json``: the list of records; ``.csv``: one row per face. Written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(records, indent=2) + "\n")
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([("" if v is None else v) for v in row] for row in csv_rows(records))


def annotate(rgb: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """A copy of ``rgb`` with each face box and its P(real) drawn (green: real >= 0.5, red: fake)."""
    out = rgb.copy()
    thick = max(1, round(max(rgb.shape[:2]) / 400))
    for f in faces:
        x1, y1, x2, y2 = f["box"]
        colour = (0, 200, 0) if f["score_real"] >= 0.5 else (230, 0, 0)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thick)
        cv2.putText(out, f"P(real) {f['score_real']:.2f}", (x1, max(y1 - 4 * thick, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, colour, thick, cv2.LINE_AA)
    return out


def save_visualisations(record: dict, out_dir: str | os.PathLike, index: int) -> list[Path]:
    """Annotated copies of an image (``{index:03d}_{stem}.jpg``) or of each scored video frame
    (``{index:03d}_{stem}_frame_{k}.jpg``) in ``out_dir``."""
    if not record["faces"] or record["path"] is None:
        return []
    stem = f"{index:03d}_{Path(record['path']).stem}"
    if record["type"] == "image":
        frames = [(None, cv2.imread(record["path"], cv2.IMREAD_COLOR))]
    else:
        frames = list(read_frames(record["path"], sorted({f["frame"] for f in record["faces"]})))
    written = []
    for idx, bgr in frames:
        faces = [f for f in record["faces"] if f["frame"] == idx]
        if bgr is None or not faces:
            continue
        name = f"{stem}.jpg" if idx is None else f"{stem}_frame_{idx}.jpg"
        drawn = annotate(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), faces)
        atomic_write_image(Path(out_dir) / name, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written.append(Path(out_dir) / name)
    return written


def table_line(record: dict) -> str:
    score = "-" if record["score_real"] is None else f"{record['score_real']:.4f}"
    verdict = "-" if record["score_real"] is None else ("real" if record["score_real"] >= 0.5 else "fake")
    error = f"  ({record['error']})" if record["error"] else ""
    return f"{score:>10}  {verdict:<7}  {len(record['faces']):>5}  {record['type']:<5}  {record['path']}{error}"


# ----------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m fsvfm.predict", description=(
        "Score every face of images, folders (recursive) and videos with a fine-tuned checkpoint. "
        "Class 1 = real: score_real = P(real); a record's score_real is the mean over its faces/frames "
        "(the test protocol's video score), >= 0.5 reads as real."))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, video files or folders")
    p.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint (.pth path or hf://Wolowolo/fsfm-3c/...)")
    p.add_argument("--output", default=None, help="write records to results.json or one row per face to results.csv")
    p.add_argument("--num_frames", type=int, default=32, help="frames sampled uniformly per video (default 32, as the test data)")
    p.add_argument("--every", type=int, default=None, metavar="K", help="score every K-th video frame instead")
    p.add_argument("--max_faces", type=int, default=None, help="at most N faces per image or frame, highest detector score first (default all)")
    p.add_argument("--no_detect", action="store_true", help="inputs are already face crops: score the whole image")
    p.add_argument("--crop_mode", default=None, choices=sorted(CROP_MODES), help="default: the checkpoint task's")
    p.add_argument("--apply_simple_augment", action="store_true",
                   help="resize-256 + centre-crop evaluation transform (as the test programs with this flag)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--amp", default=None, choices=AMP_CHOICES, help="mixed precision (default: fp16 on CUDA, none on CPU)")
    p.add_argument("--save_vis", default=None, metavar="DIR", help="write annotated images (boxes and P(real)) here")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.output and Path(args.output).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--output {args.output}: use a .json or .csv file name")
    if args.every is not None and args.every < 1 or args.num_frames < 1:
        raise UsageError("--every and --num_frames must be at least 1")
    if args.max_faces is not None and args.max_faces < 1:
        raise UsageError("--max_faces must be at least 1")


def run(args: argparse.Namespace) -> list[dict]:
    """Score ``args.inputs``; prints a table, writes ``--output`` and ``--save_vis``; returns the records."""
    _check_args(args)
    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise UsageError("no image or video files among the inputs")
    start = time.time()
    det = Detector.from_checkpoint(args.checkpoint, args.device, amp=args.amp, crop_mode=args.crop_mode,
                                   detect=not args.no_detect, apply_simple_augment=args.apply_simple_augment,
                                   max_faces=args.max_faces, num_frames=args.num_frames, every=args.every,
                                   batch_size=args.batch_size)
    print(f"{det.info['model']} ({det.info['task']}, input {det.info['input_size']}, crop {det.crop_mode}) "
          f"on {det.device}; score_real = P(real), >= 0.5 -> real")
    for line in det.info.get("warnings", []):
        print(f"WARNING: {line}")
    print(f"{'score_real':>10}  {'verdict':<7}  {'faces':>5}  {'type':<5}  input")
    records = []
    for i, record in enumerate(det.predict_many(inputs)):
        print(table_line(record), flush=True)
        if args.save_vis:
            save_visualisations(record, args.save_vis, i)
        records.append(record)
    if args.output:
        write_output(args.output, records)
    n_faces = sum(len(r["faces"]) for r in records)
    n_err = sum(r["error"] is not None for r in records)
    print(f"{len(records)} inputs, {n_faces} faces, {n_err} without a score, {time.time() - start:.1f} s"
          + (f"; wrote {args.output}" if args.output else ""))
    return records


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 (unreadable inputs are reported in their records), 2 after one line for a user
    mistake (``util.cli.run_cli``)."""
    def score(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        run(args)
        return 0
    return run_cli(score, get_args_parser(), argv, return_code=True)


if __name__ == "__main__":
    sys.exit(main())
