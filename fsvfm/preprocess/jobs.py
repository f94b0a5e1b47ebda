"""Units of work and the per-process worker that runs them.

A ``Job`` is small and picklable; a ``Worker`` holds the models (created lazily, once per process)
and turns a job into a ``Summary``: counts per status plus the failed items. Every output is
written to a temporary name and renamed, and a job whose outputs exist is skipped, so an
interrupted run resumes where it stopped. Bad inputs are counted, never raised.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsvfm.preprocess.faces import FaceCropper, smallest_side
from fsvfm.preprocess.parsing import build_parser, output_paths, parser_input, save_parsed
from fsvfm.preprocess.video import frame_count, frame_name, read_frames, unique_indices
from fsvfm.util.errors import OutputError
from fsvfm.util.fileio import atomic_path, atomic_write_image, atomic_write_text
from fsvfm.util.images import UnreadableImageError, read_bgr, read_rgb

logger = logging.getLogger(__name__)

STATUSES = ("done", "skipped", "no_face", "unreadable", "error")
REFUSED = "refused"   # an input that is not what the run expects (e.g. a photo where a face crop belongs)

# Job kind -> handler(worker, job, outcome): this module's kinds (Worker._<kind>) and those other modules
# add (e.g. the FAS chips). Register at import time, before a pool forks, so every worker knows them.
_HANDLERS: dict[str, Callable[[Worker, Job, Summary], None]] = {}


def register_kind(kind: str, handler: Callable[[Worker, Job, Summary], None]) -> None:
    """Let ``Worker.run`` dispatch jobs of ``kind`` to ``handler`` (a second, different handler fails)."""
    if _HANDLERS.get(kind, handler) is not handler:
        raise ValueError(f"job kind {kind!r} is already defined")
    _HANDLERS[kind] = handler


@dataclass(frozen=True)
class Options:
    """Settings shared by all jobs of a run (picklable: sent once to each worker)."""
    face_scale: float = 1.3
    face_size: int = 224
    img_format: str = ".png"
    upsample: int = 1
    face_select: str = "first"
    align: bool = False
    backend: str = "landmarks"
    facer_model_dir: str | None = None
    device: str | None = None
    save_vis: bool = False
    chip_padding: float = 0.37
    max_faces: int = 1            # faces kept per photo (crop_image, crop_parse); 0 = all
    full_res_detect: bool = False  # videos: search every sampled frame in full (the original), not near the last


def face_name(name: str, k: int) -> str:
    """Output stem of the ``k``-th face of a photo: ``name`` for the first, ``{name}_face{k}`` after."""
    return name if k == 0 else f"{name}_face{k}"


def face_path(path: str | Path, k: int) -> Path:
    path = Path(path)
    return path.with_name(face_name(path.stem, k) + path.suffix)


@dataclass(frozen=True)
class Job:
    """``kind``: a registered kind (``register_kind``); ``dst`` is a tuple of output files (crop_image, copy) or one folder
    (crop_video, parse, crop_parse); ``name`` is the video name or the output stem."""
    kind: str
    src: str
    dst: tuple[str, ...]
    name: str = ""
    num_frames: int | None = None


@dataclass
class Summary:
    """Counts of items (images, frames, files) per status, and every failed item: the record of
    one job (``Worker.run``) and, merged, of a whole run."""
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, item: str = "", reason: str = "") -> None:
        self.counts[status] += 1
        if status not in ("done", "skipped"):
            self.failures.append((status, item, reason))

    def merge(self, other: Summary) -> None:
        self.counts.update(other.counts)
        self.failures.extend(other.failures)

    def exclude(self, item: str, reason: str) -> None:
        """An input left out at planning time (e.g. a video in no split file)."""
        self.add("excluded", item, reason)

    def total(self) -> int:
        """Items seen, whatever their status (0: the run found nothing to do)."""
        return int(sum(self.counts.values()))

    def error_reasons(self) -> Counter:
        """How many items failed with each distinct ``error`` reason (e.g. a backend that cannot load)."""
        return Counter(reason for status, _, reason in self.failures if status == "error")

    def as_dict(self) -> dict[str, int]:
        """Counts of every status (``refused`` only when there is one)."""
        extra = (REFUSED,) if self.counts.get(REFUSED) else ()
        return {k: int(self.counts.get(k, 0)) for k in (*STATUSES, "excluded", *extra)}

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items())

    def write(self, log_dir: str | Path, run_name: str) -> Path:
        """Write ``{run_name}_failures.txt`` (status<TAB>item<TAB>reason) and ``{run_name}_summary.json``."""
        log_dir = Path(log_dir)
        lines = ["\t".join(f) for f in sorted(self.failures)]
        path = log_dir / f"{run_name}_failures.txt"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        atomic_write_text(log_dir / f"{run_name}_summary.json", json.dumps(self.as_dict(), indent=1) + "\n")
        return path


class Worker:
    def __init__(self, opts: Options):
        self.opts = opts
        self._cropper: FaceCropper | None = None
        self._parser = None
        self._resources: dict[str, Any] = {}

    def resource(self, key: str, factory: Callable[[Options], Any]) -> Any:
        """A per-process object (e.g. a detector) built once by ``factory(opts)`` on first use."""
        if key not in self._resources:
            self._resources[key] = factory(self.opts)
        return self._resources[key]

    @property
    def cropper(self) -> FaceCropper:
        if self._cropper is None:
            o = self.opts
            self._cropper = FaceCropper(o.face_scale, o.upsample, o.face_select, o.align, o.face_size)
        return self._cropper

    @property
    def parser(self):
        if self._parser is None:
            o = self.opts
            self._parser = build_parser(o.backend, o.facer_model_dir, o.device, o.upsample, o.face_select)
        return self._parser

    def run(self, job: Job) -> Summary:
        out = Summary()
        try:
            _HANDLERS[job.kind](self, job, out)
        except OutputError:  # a full disk or a read-only --dst fails every later job too: stop, one line
            raise
        except Exception as e:  # noqa: BLE001 - one bad input must not stop a long run
            logger.debug("job failed: %s", job, exc_info=True)
            out.add("error", job.src, f"{type(e).__name__}: {e}")
        return out

    def _read_and_crop(self, job: Job, out: Summary) -> list:
        """The face crops ``(bgr, rect)`` of an image file, at most ``max_faces`` of them; [] after
        counting the file as unreadable / no face."""
        try:
            bgr = read_bgr(job.src)
        except (UnreadableImageError, FileNotFoundError) as e:
            out.add("unreadable", job.src, str(e))
            return []
        crops = self.cropper.crops(bgr, self.opts.max_faces)
        if not crops:
            out.add("no_face", job.src)
        return crops

    def _crop_image(self, job: Job, out: Summary) -> None:
        """One output per kept face and ``dst`` file; the first face's file is written last, so its
        presence marks the photo as done (a resumed run skips it)."""
        todo = [d for d in job.dst if not Path(d).exists()]
        if not todo:
            return out.add("skipped")
        crops = self._read_and_crop(job, out)
        for k in reversed(range(len(crops))):
            for d in todo:
                atomic_write_image(face_path(d, k), crops[k][0])
            out.add("done")
        return None

    def _crop_video(self, job: Job, out: Summary) -> None:
        n = frame_count(job.src)
        if n < 0:
            return out.add("unreadable", job.src, "cannot open video")
        dst_dir = Path(job.dst[0])
        paths = {i: dst_dir / frame_name(job.name, i, self.opts.img_format)
                 for i in unique_indices(n, job.num_frames)}
        todo = [i for i, p in paths.items() if not p.exists()]
        if len(todo) < len(paths):
            out.counts["skipped"] += len(paths) - len(todo)
        prev_side = None   # smallest face of the previous sampled frame: the next one is searched near its size
        for idx, frame in read_frames(job.src, todo):
            item = f"{job.src}#{idx}"
            if frame is None:
                out.add("unreadable", item, "frame not decodable")
                continue
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            faces = (self.cropper.detect(rgb) if self.opts.full_res_detect  # every size in every frame
                     else self.cropper.detect_tracked(rgb, prev_side))
            prev_side = smallest_side(faces)
            crops = self.cropper.crops(frame, 1, faces, rgb=rgb)
            if not crops:
                out.add("no_face", item)
                continue
            atomic_write_image(paths[idx], crops[0][0])
            out.add("done")

    def _copy(self, job: Job, out: Summary) -> None:
        if Path(job.dst[0]).exists():
            return out.add("skipped")
        if not Path(job.src).is_file():
            return out.add("unreadable", job.src, "missing")
        with atomic_path(job.dst[0]) as tmp:
            shutil.copyfile(job.src, tmp)
        out.add("done")

    def _parse(self, job: Job, out: Summary, check_crop: bool = False) -> None:
        """Parse a face crop; with ``check_crop`` an image that is not one (``FaceCropper.crop_problem``)
        is refused instead of being squashed into one."""
        if output_paths(job.dst[0], job.name)[0].exists():
            return out.add("skipped")
        try:
            rgb = read_rgb(job.src)
        except (OSError, ValueError) as e:
            return out.add("unreadable", job.src, f"{type(e).__name__}: {e}")
        problem = self.cropper.crop_problem(np.asarray(rgb)) if check_crop else None
        if problem is not None:
            return out.add(REFUSED, job.src, f"not a face crop: {problem}")
        self._parse_and_save(job, out, rgb.resize((self.opts.face_size,) * 2, Image.BICUBIC), None)

    def _crop_parse(self, job: Job, out: Summary) -> None:
        if output_paths(job.dst[0], job.name)[0].exists():
            return out.add("skipped")
        crops = self._read_and_crop(job, out)
        for k in reversed(range(len(crops))):      # the first face last: it marks the photo as done
            image, rect = parser_input(*crops[k], self.opts.face_size)
            self._parse_and_save(job, out, image, rect, face_name(job.name, k))
        return None

    def _parse_and_save(self, job: Job, out: Summary, image: Image.Image, rect, name: str | None = None) -> None:
        label_map = self.parser.parse(np.asarray(image), rect)
        if label_map is None:
            return out.add("no_face", job.src, f"no face found by the {self.parser.name} parser")
        save_parsed(job.dst[0], name or job.name, image, label_map, self.opts.save_vis)
        out.add("done")


def _parse_checked(worker: Worker, job: Job, out: Summary) -> None:
    worker._parse(job, out, check_crop=True)


for _kind in ("crop_image", "crop_video", "copy", "parse", "crop_parse"):
    register_kind(_kind, getattr(Worker, f"_{_kind}"))
register_kind("parse_checked", _parse_checked)
