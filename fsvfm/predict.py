"""Score the faces of your own images and videos with a fine-tuned checkpoint.

    python -m fsvfm.predict --checkpoint CKPT photo.jpg photos/ clip.mp4 [--output results.json|results.csv]
    python -m fsvfm.predict --checkpoint hf://Wolowolo/fsfm-3c/<path>/checkpoint-min_val_loss.pth photo.jpg

Every face gets ``scores`` (each class's probability, by class name) and ``label`` (the decided class).
The classes come from the checkpoint (``classes``), from the table of released files that predate that key
(the unified detector: real, deepfake, diffusion, spoof), from its task (DfD/DiFF: fake 0, real 1; FAS:
spoof 0, live 1), else they are ``class_0..`` with a warning; ``--classes`` names them. Binary models also
report the positive class's probability as ``score_real``/``score_fake`` (DfD/DiFF: P(real) = softmax[1],
as in the test programs) or ``score_live``/``score_spoof`` (FAS), decided at 0.5; N-class models are
decided by the argmax. Every face of an image (or of each sampled video frame) is detected and cropped
exactly as the training data of the checkpoint's task was (DfD/DiFF: dlib HOG, upsample 1, square x1.3 box,
native resolution; ``fsvfm.preprocess.faces``; FAS: the most confident MTCNN faces, each as the 5-point aligned
224x224 chip of the FAS preprocessing, ``fsvfm.preprocess.align``), then resized and normalised with the test
programs' evaluation transform (FAS: as its test frames). Videos are sampled like the test data (``--num_frames 32`` uniformly, first and last
frame included) or every K-th frame (``--every K``).

One record per input::

    {"path": str | None, "type": "image" | "video",
     "faces": [{"frame": int | None, "box": [x1, y1, x2, y2], "detector_score": float | None,
               "scores": {class: float}, "label": str,
                "score_real": float, "score_fake": float}, ...],   # binary DfD (FAS: score_live, score_spoof)
     "scores": {class: float} | None,   # mean over all faces (and frames): the test protocol's video score
     "label": str | None,
     "score_real": float | None,        # binary DfD (FAS: score_live): the mean of the faces'
     "error": str | None,               # e.g. unreadable file, no face found, any failure on this input
     "warning": str | None}             # scored, but from a partial input (truncated image, short video)

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
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fsvfm.preprocess.faces import FaceCropper, square_crop
from fsvfm.preprocess.jobs import Options
from fsvfm.preprocess.video import VIDEO_EXTENSIONS, frame_count, read_frames, unique_indices
from fsvfm.tasks import TASK_ENTRIES, get_task, task_of_weights
from fsvfm.util.accel import inference_context, prepare_inference
from fsvfm.util.amp import AMP_CHOICES, resolve_amp
from fsvfm.util.args import class_names
from fsvfm.util.checkpoint import args_dict, load_checkpoint, model_warnings, resolve_checkpoint_path
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import UsageError
from fsvfm.util.fileio import atomic_path, atomic_write_image, atomic_write_text, writable_folder_problem
from fsvfm.util.images import (
    ImageTooLargeError,
    UnreadableImageError,
    add_max_pixels_flag,
    apply_max_pixels_flag,
    read_bgr,
)
from fsvfm.util.naming import DFD_VOCABULARY, IMAGE_EXTENSIONS, ClassVocabulary, checkpoint_vocabulary

logger = logging.getLogger(__name__)


_END = object()  # the crop thread's last event
SAVE_EVERY_S = 60.0  # --output is rewritten (atomically) at most this often during a run

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
    """The DfD/DiFF training crop: every dlib face, square x1.3 box, native resolution, in
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
    """The FAS training chip: every MTCNN face (most confident first; the preprocessing kept the
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


# Crop modes by name (a new mode is an entry: name -> factory of an RGB array -> [FaceCrop] function); the mode a
# task's training data used is its table entry's ``crop_mode``.
CROP_MODES: dict[str, Callable[[], CropFn]] = {"dlib_square": dlib_square_crops, "whole_image": whole_image_crops,
                                               "fas_aligned": fas_aligned_crops}


def crop_mode_for(task: str) -> str:
    if task not in TASK_ENTRIES:
        raise UsageError(f"no face-crop mode for task {task!r} yet (known: {sorted(TASK_ENTRIES)}); "
                         "pass --no_detect with ready-made face crops")
    return get_task(task).crop_mode


# ------------------------------------------------------------------------------------- model
def rebuild_classifier(path: str | os.PathLike, apply_simple_augment: bool = False,
                       classes: Sequence[str] | None = None
                       ) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], dict[str, Any]]:
    """The fine-tuned classifier of a checkpoint (local or ``hf://``) and the test programs' evaluation
    transform (PIL image -> [3, S, S]), rebuilt by its task's ``rebuild`` (DfD/DiFF:
    :func:`fsvfm.finetune_setup.load_classifier_from_checkpoint`, as the test programs; FAS:
    :func:`fsvfm.tasks.fas.load_fas_from_checkpoint`). A file that names no task is FAS when its weights are
    a FAS network's (the released ``.pth.tar``), else DfD. ``info['classes']`` is the model's
    ``ClassVocabulary`` (``classes``: names in index order, overriding the checkpoint's). Returns
    ``(model in eval mode, transform, info)``."""
    local = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint(local)
    stored = args_dict(checkpoint)
    task = checkpoint.get("task") or stored.get("task") or task_of_weights(checkpoint)
    if task not in TASK_ENTRIES:
        raise UsageError(f"{path}: unknown task {task!r} (known: {sorted(TASK_ENTRIES)})")
    entry = get_task(task)
    model, transform, built = entry.rebuild(
        local, checkpoint=checkpoint, apply_simple_augment=apply_simple_augment,
        normalize_from_IMN=stored.get("normalize_from_IMN"))
    n = int(built.get("nb_classes") or len(entry.vocabulary.names))
    vocab, vocab_source = checkpoint_vocabulary(checkpoint, [str(path), str(local)], n, entry.vocabulary, classes)
    info = {"checkpoint": str(path), "model": built["model"], "input_size": built["input_size"], "task": task,
            "warnings": model_warnings(checkpoint),
            "norm_stats": {"mean": built["mean"], "std": built["std"], "source": built["norm_source"]},
            "classes": vocab, "classes_source": vocab_source}
    return model, transform, info


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


def new_record(path: str | None, kind: str, vocab: ClassVocabulary = DFD_VOCABULARY) -> dict[str, Any]:
    record: dict[str, Any] = {"path": path, "type": kind, "faces": [], "scores": None, "label": None}
    if vocab.binary:
        record[score_key(vocab)] = None
    record["error"] = None
    record["warning"] = None
    return record


def _note(record: dict, warning: str) -> None:
    record["warning"] = warning if not record["warning"] else f"{record['warning']}; {warning}"


def score_key(vocab: ClassVocabulary, index: int | None = None) -> str:
    """``score_real`` (DfD), ``score_live`` (FAS): the key of class ``index`` (default the positive one)."""
    return f"score_{vocab.names[vocab.positive if index is None else index]}"


def decide(vocab: ClassVocabulary, probs: Sequence[float]) -> str:
    """Binary: the positive class when its probability is >= 0.5 (the test protocol's video decision);
    N classes: the argmax."""
    if vocab.binary:
        return vocab.names[vocab.positive if probs[vocab.positive] >= 0.5 else vocab.negative]
    return vocab.names[int(np.argmax(probs))]


def class_scores(vocab: ClassVocabulary, probs: Sequence[float]) -> dict[str, Any]:
    """A face's or a record's score fields from its class probabilities [C]."""
    out: dict[str, Any] = {}
    if vocab.binary:
        out[score_key(vocab)] = float(probs[vocab.positive])
        out[score_key(vocab, vocab.negative)] = float(probs[vocab.negative])
    out["scores"] = {n: float(v) for n, v in zip(vocab.names, probs)}
    out["label"] = decide(vocab, probs)
    return out


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
        self.model = prepare_inference(model, self.device, amp=self.amp)
        self.transform, self.crop_mode, self.crop = transform, crop_mode, CROP_MODES[crop_mode]()
        self.max_faces, self.num_frames, self.every = max_faces, num_frames, every
        self.batch_size, self.info = batch_size, dict(info or {})
        self.classes: ClassVocabulary = self.info.get("classes") or DFD_VOCABULARY
        self._crop_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None, *,
                        amp: str | None = None, crop_mode: str | None = None, detect: bool = True,
                        apply_simple_augment: bool = False, classes: Sequence[str] | None = None,
                        **options: Any) -> Detector:
        """Rebuild the model of a fine-tuned checkpoint (local path or ``hf://``). ``crop_mode`` defaults
        to the checkpoint task's (``detect=False``: inputs are already crops); ``options`` are the
        keyword arguments of ``__init__`` (``max_faces``, ``num_frames``, ``every``, ``batch_size``)."""
        model, transform, info = rebuild_classifier(path, apply_simple_augment, classes)
        mode = "whole_image" if not detect else crop_mode or crop_mode_for(info["task"])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, transform, device=device, amp=amp, crop_mode=mode, info=info, **options)

    # ------------------------------------------------------------------------------- faces
    def faces_of(self, rgb: np.ndarray) -> list[FaceCrop]:
        """The faces of one RGB image [H, W, 3] uint8 (at most ``max_faces``)."""
        with self._crop_lock:  # one detector call at a time: dlib's crashes when two threads share it
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
            warnings: list[str] = []
            try:
                bgr = read_bgr(path, warnings)
            except ImageTooLargeError as e:
                record["error"] = str(e)
                return
            except UnreadableImageError:
                bgr = None
            if bgr is not None:
                for w in warnings:
                    _note(record, w)
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
        missing = []
        for idx, frame in read_frames(path, self.frame_indices(count)):
            if frame is None:
                missing.append(idx)
            else:
                yield from ((idx, f) for f in self.faces_of(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
        if missing:
            _note(record, f"the video ended before frame {missing[0]} of the {count} its header claims: "
                          f"{len(missing)} sampled frame(s) not scored")

    # ------------------------------------------------------------------------------ scoring
    def score_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, C] (columns in ``self.classes`` order) of RGB face crops, in batches."""
        tensors = [self.transform(Image.fromarray(c)) for c in crops]
        return self._score(tensors) if tensors else np.zeros((0, len(self.classes.names)))

    def _score(self, tensors: list[torch.Tensor]) -> np.ndarray:
        out = []
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(tensors[start:start + self.batch_size]).to(self.device)
            with inference_context(self.device, self.amp):
                logits = self.model(batch)
            out.append(logits.float().softmax(dim=-1).cpu().numpy())
        return np.concatenate(out)

    def _flush(self, queue: list[tuple[dict, dict, torch.Tensor]]) -> None:
        if not queue:
            return
        try:
            probs = self._score([t for _, _, t in queue])
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the inputs of this batch fail, the run goes on
            for record, _, _ in queue:
                _fail(record, e)
        else:
            for (_, entry, _), p in zip(queue, probs):
                entry.update(class_scores(self.classes, p))
        queue.clear()

    def predict_many(self, items: Iterable[ImageInput]) -> Iterator[dict[str, Any]]:
        """One record per input, in order; faces of consecutive inputs share batches. Decoding, detection
        and cropping run in a background thread while the network scores the previous batch. Any
        failure on one input becomes that input's ``error``; the others go on."""
        events: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)  # bounded: crops wait for the network
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(items, events, stop), daemon=True,
                                  name="fsvfm-predict-crops")
        thread.start()
        batch: list[tuple[dict, dict, torch.Tensor]] = []
        ready: list[dict] = []  # inputs whose faces are all queued, in order
        try:
            while (event := events.get()) is not _END:
                if isinstance(event, BaseException):
                    raise event
                record, entry, tensor = event
                if entry is not None:
                    batch.append(event)
                    if len(batch) >= self.batch_size:
                        self._flush(batch)
                        yield from self._drain(ready)
                    continue
                ready.append(record)
                if not batch:
                    yield from self._drain(ready)
            self._flush(batch)
            yield from self._drain(ready)
        finally:  # also when the caller stops early: the thread ends instead of cropping on
            stop.set()
            thread.join()

    def _produce(self, items: Iterable[ImageInput], events: queue.Queue, stop: threading.Event) -> None:
        """The crop thread: ``(record, entry, tensor)`` per face, ``(record, None, None)`` when an input is
        done, then ``_END``; an exception that is not one input's problem is passed on to be raised."""
        def put(event: Any) -> bool:
            while not stop.is_set():
                try:
                    events.put(event, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in items:
                is_path = isinstance(item, (str, os.PathLike))
                record = new_record(str(item) if is_path else None, input_type(item) if is_path else "image",
                                    self.classes)
                if not is_path:
                    item = _rgb(item)  # a wrong array type is the caller's mistake (TypeError), not an input's
                try:
                    for frame, face in self._crops(item, record):
                        tensor = self.transform(Image.fromarray(face.image))
                        entry = {"frame": frame, "box": [int(v) for v in face.box],
                                 "detector_score": face.detector_score}
                        record["faces"].append(entry)
                        if not put((record, entry, tensor)):
                            return
                except Exception as e:  # noqa: BLE001 - one input (a bad file, memory) must not stop the run
                    _fail(record, e)
                if not put((record, None, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            put(e)
            return
        put(_END)

    def _drain(self, ready: list[dict]) -> Iterator[dict]:
        done, ready[:] = list(ready), []
        yield from (self._finish(r) for r in done)

    def predict(self, item: ImageInput) -> dict[str, Any]:
        """The record of one image path, video path, PIL image or RGB uint8 array [H, W, 3]."""
        return next(self.predict_many([item]))

    def _finish(self, record: dict) -> dict:
        return finish_record(record, self.classes)


def _fail(record: dict, error: BaseException) -> None:
    """The input of ``record`` failed: its error, no faces (a partial video gets no score)."""
    logger.debug("%s failed", record["path"], exc_info=error)
    record["error"] = f"{type(error).__name__}: {error}".strip()
    record["faces"] = []


def finish_record(record: dict, vocab: ClassVocabulary) -> dict:
    """Record scores = mean face scores (the test protocol's video score); no face is an error."""
    if record["error"] is not None:
        record["faces"] = []
    if record["faces"]:
        mean = [float(np.mean([f["scores"][n] for f in record["faces"]])) for n in vocab.names]
        fields = class_scores(vocab, mean)
        fields.pop(score_key(vocab, vocab.negative), None)  # the record keeps the positive class's only
        record.update(fields)
    elif record["error"] is None:
        record["error"] = "no face found" + (" in the sampled frames" if record["type"] == "video" else "")
    return record


# ------------------------------------------------------------------------------------ outputs
def csv_columns(vocab: ClassVocabulary = DFD_VOCABULARY) -> tuple[str, ...]:
    """Binary: ``score_{positive}``, ``score_{other}``, ``input_score_{positive}`` (DfD: the historical
    ``score_real, score_fake, input_score_real``); N classes: ``score_{class}`` each, ``label``,
    ``input_label``."""
    head = ("path", "type", "frame", "x1", "y1", "x2", "y2", "detector_score")
    if vocab.binary:
        return (*head, score_key(vocab), score_key(vocab, vocab.negative), f"input_{score_key(vocab)}",
                "error", "warning")
    return (*head, *(f"score_{n}" for n in vocab.names), "label", "input_label", "error", "warning")


CSV_COLUMNS = csv_columns(DFD_VOCABULARY)


def csv_rows(records: Iterable[dict], vocab: ClassVocabulary = DFD_VOCABULARY) -> Iterator[list[Any]]:
    """One row per face; an input without faces gets one row with empty face columns (and its error)."""
    n_scores = 2 if vocab.binary else len(vocab.names) + 1
    for r in records:
        tail = [r[score_key(vocab)] if vocab.binary else r["label"], r["error"], r.get("warning")]
        for f in r["faces"]:
            if vocab.binary:
                scores = [f[score_key(vocab)], f[score_key(vocab, vocab.negative)]]
            else:
                scores = [*(f["scores"][n] for n in vocab.names), f["label"]]
            yield [r["path"], r["type"], f["frame"], *f["box"], f["detector_score"], *scores, *tail]
        if not r["faces"]:
            yield [r["path"], r["type"], *([None] * (6 + n_scores)), *tail]


def write_output(path: str | os.PathLike, records: list[dict], vocab: ClassVocabulary = DFD_VOCABULARY) -> None:
    """``.json``: the list of records; ``.csv``: one row per face (``csv_columns``). Written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(records, indent=2) + "\n")
        return
    # surrogateescape: a file name that is not UTF-8 is written as its own bytes, so it still names the file
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_columns(vocab))
        writer.writerows([("" if v is None else v) for v in row] for row in csv_rows(records, vocab))


# class colours (RGB) of the pictures: the positive / first class green, the others red, orange, magenta, ...
PALETTE = ((0, 200, 0), (230, 0, 0), (255, 140, 0), (200, 0, 200), (0, 120, 255), (120, 80, 0))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def face_caption(face: dict, vocab: ClassVocabulary) -> tuple[str, tuple[int, int, int]]:
    """``P(real) 0.73`` (binary) or ``deepfake 0.81`` (N classes: the decided class) and its colour."""
    label = face["label"]
    k = vocab.names.index(label)
    if vocab.binary:
        positive = vocab.names[vocab.positive]
        return f"P({positive}) {face['scores'][positive]:.2f}", PALETTE[0 if k == vocab.positive else 1]
    order = [vocab.positive, *(i for i in range(len(vocab.names)) if i != vocab.positive)]
    return f"{label} {face['scores'][label]:.2f}", PALETTE[order.index(k) % len(PALETTE)]


Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]], width: int,
                 height: int) -> list[Rect]:
    """One label rectangle per face, inside the ``width`` x ``height`` picture and clear of the others where
    the picture leaves room: above the box, else inside its top edge, else below it, else the nearest free
    row; x is shifted left where the label would leave the right edge. ``sizes``: (w, h) per label (at
    most the picture's size)."""
    placed: list[Rect] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes):
        w, h = min(w, width), min(h, height)
        x = min(max(int(x1), 0), width - w)
        rows = [int(y1) - h, int(y1), int(y2)]
        rows += sorted(range(0, height - h + 1, max(h // 2, 1)), key=lambda r: abs(r - int(y1)))
        rect = None
        for y in rows:
            if 0 <= y <= height - h:
                cand = (x, y, x + w, y + h)
                if not any(_overlaps(cand, o) for o in placed):
                    rect = cand
                    break
        if rect is None:  # no free row in this column: try every column, then give in
            spots = ((cx, cy) for cy in range(0, height - h + 1, max(h // 2, 1))
                     for cx in range(0, width - w + 1, max(w // 4, 1)))
            rect = next(((cx, cy, cx + w, cy + h) for cx, cy in spots
                         if not any(_overlaps((cx, cy, cx + w, cy + h), o) for o in placed)),
                        (x, max(min(int(y1), height - h), 0), x + w, max(min(int(y1), height - h), 0) + h))
        placed.append(rect)
    return placed


def annotate(rgb: np.ndarray, faces: Sequence[dict], vocab: ClassVocabulary = DFD_VOCABULARY,
             return_labels: bool = False):
    """A copy of ``rgb`` with each face box and its caption (``face_caption``) on a filled label inside the
    picture, labels out of each other's way (``place_labels``); with ``return_labels`` also the label
    rectangles ``[(x1, y1, x2, y2), ...]`` (x2/y2 exclusive)."""
    out = rgb.copy()
    height, width = rgb.shape[:2]
    thick = max(1, round(max(height, width) / 400))
    captions = [face_caption(f, vocab) for f in faces]
    scales, sizes = [], []
    for text, _ in captions:
        scale = 0.4 * thick
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        if tw + 4 > width:  # a narrow picture: a smaller font rather than a cut label
            scale *= (width - 4) / (tw + 4)
            (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        scales.append(scale)
        sizes.append((tw + 4, th + base + 4))
    for f, (_, colour) in zip(faces, captions):
        x1, y1, x2, y2 = f["box"]
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thick)
    rects = place_labels([f["box"] for f in faces], sizes, width, height)
    for (text, colour), scale, (lx1, ly1, lx2, ly2) in zip(captions, scales, rects):
        cv2.rectangle(out, (lx1, ly1), (lx2 - 1, ly2 - 1), colour, cv2.FILLED)
        baseline = cv2.getTextSize(text, FONT, scale, thick)[1]
        cv2.putText(out, text, (lx1 + 2, ly2 - 2 - baseline), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return (out, rects) if return_labels else out


def save_visualisations(record: dict, out_dir: str | os.PathLike, index: int,
                        vocab: ClassVocabulary = DFD_VOCABULARY) -> list[Path]:
    """Annotated copies of an image (``{index:03d}_{stem}.jpg``) or of each scored video frame
    (``{index:03d}_{stem}_frame_{k}.jpg``) in ``out_dir``."""
    if not record["faces"] or record["path"] is None:
        return []
    stem = f"{index:03d}_{Path(record['path']).stem}"
    if record["type"] == "image":
        frames = [(None, read_bgr(record["path"]))]
    else:
        frames = list(read_frames(record["path"], sorted({f["frame"] for f in record["faces"]})))
    written = []
    for idx, bgr in frames:
        faces = [f for f in record["faces"] if f["frame"] == idx]
        if bgr is None or not faces:
            continue
        name = f"{stem}.jpg" if idx is None else f"{stem}_frame_{idx}.jpg"
        drawn = annotate(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), faces, vocab)
        atomic_write_image(Path(out_dir) / name, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written.append(Path(out_dir) / name)
    return written


def table_columns(vocab: ClassVocabulary = DFD_VOCABULARY) -> str:
    first = score_key(vocab) if vocab.binary else "score"
    return f"{first:>10}  {'verdict':<9}  {'faces':>5}  {'type':<5}  input"


def table_line(record: dict, vocab: ClassVocabulary = DFD_VOCABULARY) -> str:
    """Binary: the positive class's mean score; N classes: the decided class's mean probability."""
    if record["label"] is None:
        score = "-"
    else:
        score = f"{record[score_key(vocab)] if vocab.binary else record['scores'][record['label']]:.4f}"
    verdict = record["label"] or "-"
    error = (f"  ({record['error']})" if record["error"]
             else f"  (warning: {record['warning']})" if record.get("warning") else "")
    line = f"{score:>10}  {verdict:<9}  {len(record['faces']):>5}  {record['type']:<5}  {record['path']}{error}"
    return line.encode("utf-8", "backslashreplace").decode("utf-8")  # a non-UTF-8 name prints escaped


def reading(vocab: ClassVocabulary) -> str:
    """How to read the scores, for the log line and the app."""
    if vocab.binary:
        pos = vocab.names[vocab.positive]
        return f"{score_key(vocab)} = P({pos}), >= 0.5 -> {pos}, else {vocab.names[vocab.negative]}"
    return f"{len(vocab.names)} classes ({', '.join(vocab.names)}): score = P(decided class), verdict = argmax"


# ----------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m fsvfm.predict", description=(
        "Score every face of images, folders (recursive) and videos with a fine-tuned checkpoint. Every class's "
        "probability is reported by name. DfD/DiFF (fake 0, real 1): score_real = P(real); FAS (spoof 0, live 1): "
        "score_live = P(live); a record's score is the mean over its faces/frames (the test protocol's video "
        "score), >= 0.5 reads as real / live. N-class detectors (e.g. the unified real / deepfake / diffusion / "
        "spoof detector): the argmax class."))
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
    p.add_argument("--save_vis", default=None, metavar="DIR",
                   help="write annotated images (boxes and P(real) / P(live) / the decided class) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar (count and ETA) on stderr")
    p.add_argument("--classes", type=class_names, default=None, metavar="NAME,NAME,...",
                   help="name the model's classes in index order (default: the checkpoint's, or its task's)")
    add_max_pixels_flag(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.output and Path(args.output).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--output {args.output}: use a .json or .csv file name")
    if args.every is not None and args.every < 1 or args.num_frames < 1:
        raise UsageError("--every and --num_frames must be at least 1")
    if args.max_faces is not None and args.max_faces < 1:
        raise UsageError("--max_faces must be at least 1")
    apply_max_pixels_flag(args)
    # before any scoring: a folder that cannot take the results is found now, not after the run
    for flag, folder in (("--output", Path(args.output).parent if args.output else None), ("--save_vis", args.save_vis)):
        if folder is not None:
            problem = writable_folder_problem(folder)
            if problem:
                raise UsageError(f"{flag} {getattr(args, flag[2:])}: {problem}")


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
                                   batch_size=args.batch_size, classes=args.classes)
    print(f"{det.info['model']} ({det.info['task']}, input {det.info['input_size']}, crop {det.crop_mode}) "
          f"on {det.device}; {reading(det.classes)}; normalisation from {det.info['norm_stats']['source']}")
    for line in det.info.get("warnings", []):
        print(f"WARNING: {line}")
    print(table_columns(det.classes))
    records: list[dict] = []
    written_at = time.monotonic()
    progress = tqdm(total=len(inputs), desc="predict", unit="input", file=sys.stderr, disable=args.quiet,
                    dynamic_ncols=True)
    stream = det.predict_many(inputs)
    try:
        for i, record in enumerate(stream):
            if args.save_vis:
                try:
                    save_visualisations(record, args.save_vis, i, det.classes)
                except Exception as e:  # noqa: BLE001 - the score stands without its picture
                    _note(record, f"no visualisation ({type(e).__name__}: {e})")
            progress.write(table_line(record, det.classes), file=sys.stdout)  # above the bar, not through it
            sys.stdout.flush()
            progress.update()
            records.append(record)
            if args.output and time.monotonic() - written_at > SAVE_EVERY_S:  # finished work survives a kill
                write_output(args.output, records, det.classes)
                written_at = time.monotonic()
    finally:
        stream.close()  # stops the crop thread now, also after an interrupt
        progress.close()
        if args.output and len(records) < len(inputs):
            write_output(args.output, records, det.classes)
            print(f"stopped after {len(records)} of {len(inputs)} inputs; wrote their records to {args.output}",
                  file=sys.stderr, flush=True)
    if args.output:
        write_output(args.output, records, det.classes)
    n_faces = sum(len(r["faces"]) for r in records)
    n_err = sum(r["error"] is not None for r in records)
    n_warn = sum(r["warning"] is not None for r in records)
    print(f"{len(records)} inputs, {n_faces} faces, {n_err} without a score"
          + (f", {n_warn} with a warning" if n_warn else "") + f", {time.time() - start:.1f} s"
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
