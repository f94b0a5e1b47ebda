"""Face anti-spoofing data: MCIO aligned chips, WCS black-border crops, custom folders.

Job kinds (run by the shared ``runner`` with its workers, resume, failures list and summary):
``fas_video`` (two aligned chips per video), ``fas_image`` (one aligned chip), ``border_image``
(black borders removed), ``cefa_frame`` (pick one sampled CeFA frame) and ``wmca_frame`` (one frame
group of a WMCA HDF5 file). Chips come from MTCNN landmarks and ``align.extract_image_chip``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fsvfm.data.fas import FASDataError, read_list_file
from fsvfm.preprocess.align import extract_image_chip
from fsvfm.preprocess.jobs import Job, Options, Summary, Worker, face_path, register_kind
from fsvfm.preprocess.layouts import custom_inputs, flat_name, list_files
from fsvfm.preprocess.mtcnn import MTCNNDetector
from fsvfm.preprocess.runner import Stage
from fsvfm.preprocess.video import frame_count, read_frames
from fsvfm.util.fileio import atomic_write_image
from fsvfm.util.images import ImageTooLargeError, UnreadableImageError, check_pixels, read_bgr

logger = logging.getLogger(__name__)

FIRST_FRAME = 6  # the original's first target index; the second is FIRST_FRAME + N // 2
CEFA_RACES = {"1": "AF", "2": "CA", "3": "EA"}
WCS_LISTS = ("fake_test", "fake_train", "real_test", "real_train", "real_shot", "fake_shot")
OPTIONAL_LISTS = ("real_shot", "fake_shot")  # few-shot lists, unused by the 0-shot protocol


# --- frames and images -------------------------------------------------------------------------

def two_frame_targets(frame_total: int) -> list[int]:
    """The original's two target indices ``[6, 6 + N // 2]`` of a video with N frames."""
    return [FIRST_FRAME, FIRST_FRAME + frame_total // 2]


def fas_frame_names(prefix: str, img_format: str = ".png") -> list[str]:
    """``{prefix}_frame0.png``, ``{prefix}_frame1.png`` (the names the MCIO list files use)."""
    return [f"{prefix}_frame{k}{img_format}" for k in (0, 1)]


def remove_black_borders(image: np.ndarray) -> np.ndarray:
    """Crop to the box of pixels whose channel mean is non-zero, last row/column included (D25).

    Works on (H, W) and (H, W, C) arrays; an all-black image is returned unchanged.
    """
    mean = image if image.ndim == 2 else image.mean(axis=2)
    rows, cols = np.flatnonzero(mean.any(axis=1)), np.flatnonzero(mean.any(axis=0))
    if rows.size == 0:
        return image
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _detector(opts: Options) -> MTCNNDetector:
    return MTCNNDetector(opts.device, opts.face_select)


def aligned_chip(worker: Worker, bgr: np.ndarray) -> np.ndarray | None:
    """The ``face_size`` aligned chip of the kept MTCNN face of a BGR frame, or None without a face."""
    chips = aligned_chips(worker, bgr, 1)
    return chips[0] if chips else None


def aligned_chips(worker: Worker, bgr: np.ndarray, max_faces: int = 1) -> list[np.ndarray]:
    """The aligned chips of the first ``max_faces`` MTCNN faces in ``face_select`` order (0 = all)."""
    faces = worker.resource("mtcnn", _detector).ranked(np.ascontiguousarray(bgr[:, :, ::-1]))
    return [extract_image_chip(bgr, f.points, worker.opts.face_size, worker.opts.chip_padding)
            for f in (faces[:max_faces] if max_faces > 0 else faces)]


def _fas_video(worker: Worker, job: Job, out: Summary) -> None:
    """Two chips: for each target index, the first frame at or after it (up to the last frame, D20)
    where a face is found; one frame may serve both targets. Only frames from a target on are decoded
    (``read_frames`` seeks over long gaps)."""
    paths = [Path(job.dst[0]) / n for n in fas_frame_names(job.name, worker.opts.img_format)]
    pending = {k for k, p in enumerate(paths) if not p.exists()}
    out.counts["skipped"] += 2 - len(pending)
    if not pending:
        return None
    total = frame_count(job.src)
    if total < 0:
        return out.add("unreadable", job.src, "cannot open video")
    targets = two_frame_targets(total)
    while pending:   # from the earliest pending target on to the first face; frames no target needs are not read
        found = None
        frames = read_frames(job.src, range(min(targets[k] for k in pending), total))
        try:
            for idx, frame in frames:
                chip = aligned_chip(worker, frame) if frame is not None else None
                if chip is not None:
                    found = idx
                    break
        finally:
            frames.close()
        if found is None:
            break
        for k in [k for k in pending if targets[k] <= found]:
            atomic_write_image(paths[k], chip)
            out.add("done")
            pending.discard(k)
    for k in sorted(pending):
        out.add("no_face", f"{job.src}#frame{k}", f"no face in frames {targets[k]} to {total - 1} "
                f"of {total}")


def _read_image(job: Job, out: Summary, src: str | None = None) -> np.ndarray | None:
    src = src or job.src
    try:
        return read_bgr(src)
    except (UnreadableImageError, FileNotFoundError) as e:
        out.add("unreadable", src, str(e))
        return None


def _fas_image(worker: Worker, job: Job, out: Summary) -> None:
    todo = [d for d in job.dst if not Path(d).exists()]
    if not todo:
        return out.add("skipped")
    img = _read_image(job, out)
    if img is None:
        return None
    chips = aligned_chips(worker, img, worker.opts.max_faces)
    if not chips:
        return out.add("no_face", job.src)
    for k in reversed(range(len(chips))):      # the first face last: it marks the photo as done
        for d in todo:
            atomic_write_image(face_path(d, k), chips[k])
        out.add("done")


def _write_cropped(job: Job, out: Summary, img: np.ndarray) -> None:
    atomic_write_image(job.dst[0], remove_black_borders(img))
    out.add("done")


def _border_image(worker: Worker, job: Job, out: Summary) -> None:
    if Path(job.dst[0]).exists():
        return out.add("skipped")
    img = _read_image(job, out)
    if img is not None:
        _write_cropped(job, out, img)


def _cefa_frame(worker: Worker, job: Job, out: Summary) -> None:
    """``job.src`` = a CeFA ``profile`` folder, ``job.name`` = sample number k: of the sorted frames
    sampled with step ``len // 10``, the k-th."""
    if Path(job.dst[0]).exists():
        return out.add("skipped")
    frames = list_files(job.src, (".jpg",), recursive=False)
    step, k = len(frames) // 10, int(job.name)
    if step == 0 or k * step >= len(frames):
        return out.add("unreadable", job.src, f"{len(frames)} frames, cannot take sample {k} of 10")
    img = _read_image(job, out, str(frames[k * step]))
    if img is not None:
        _write_cropped(job, out, img)


def hdf5_image(array: np.ndarray) -> np.ndarray | None:
    """An HDF5 dataset as an OpenCV image: (1, H, W) and (H, W) grey, (3, H, W) RGB -> BGR; else None."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] == 3:
        array = np.ascontiguousarray(array.transpose(1, 2, 0)[:, :, ::-1])
    if array.ndim not in (2, 3):
        return None
    return array if array.dtype == np.uint8 else np.clip(array, 0, 255).astype(np.uint8)


def _wmca_frame(worker: Worker, job: Job, out: Summary) -> None:
    """Frame group ``<x>_<frame>`` with frame == ``job.name`` of the HDF5 file; its last dataset that
    is an image is written once (the original wrote every dataset to the same file, D26)."""
    import h5py
    if Path(job.dst[0]).exists():
        return out.add("skipped")
    if not Path(job.src).is_file():
        return out.add("unreadable", job.src, "missing")
    with h5py.File(job.src, "r") as f:
        groups = [g for g in f if g.rsplit("_", 1)[-1].isdigit() and int(g.rsplit("_", 1)[-1]) == int(job.name)]
        datasets = [f[g][d] for g in groups for d in f[g] if isinstance(f[g][d], h5py.Dataset)]
        try:  # the pixel guard, from the dataset's shape before it is read
            for ds in datasets:
                check_pixels(int(ds.shape[-1]) if ds.ndim else 1, int(ds.shape[-2]) if ds.ndim > 1 else 1,
                             f"{job.src}#{ds.name}")
        except ImageTooLargeError as e:
            return out.add("unreadable", f"{job.src}#{job.name}", str(e))
        images = [hdf5_image(np.asarray(ds)) for ds in datasets]
    images = [i for i in images if i is not None]
    if not images:
        return out.add("unreadable", f"{job.src}#{job.name}", "no image for this frame")
    _write_cropped(job, out, images[-1])


for _kind, _handler in (("fas_video", _fas_video), ("fas_image", _fas_image), ("border_image", _border_image),
                        ("cefa_frame", _cefa_frame), ("wmca_frame", _wmca_frame)):
    register_kind(_kind, _handler)


# --- MCIO -------------------------------------------------------------------------

def _stem(name: str) -> str:
    """Name without its last extension only (the original cut at the first ``.``, D21)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _label(rel: str, real: str, fake: str) -> str | None:
    return "real" if real in rel else "fake" if fake in rel else None


def replay_rule(rel: str) -> tuple[str, str, str] | str | None:
    """(split, class, prefix) of ``/``-prefixed relative path; a string = excluded (reason); None = not in protocol."""
    if "/enroll/" in rel or "/competition_icb2013/" in rel:
        return None
    split = next((s for k, s in (("/train/", "train"), ("/test/", "test"), ("/devel/", "dev")) if k in rel), None)
    cls = _label(rel, "/real/", "/attack/")
    if split is None or cls is None:
        return "no train/test/devel split or real/attack class in the path"
    return split, cls, _stem("_".join(rel.split("/")[-2:]))


def oulu_rule(rel: str) -> tuple[str, str, str] | str | None:
    split = next((s for k, s in (("/Train_files/", "train"), ("/Test_files/", "test"), ("/Dev_files/", "dev"))
                  if k in rel), None)
    if split is None:
        return "no Train_files/Test_files/Dev_files folder in the path"
    stem = _stem(rel.rsplit("/", 1)[-1])
    return split, "real" if stem.rsplit("_", 1)[-1] == "1" else "fake", stem


def casia_rule(rel: str) -> tuple[str, str, str] | str | None:
    split = next((s for k, s in (("/train_release/", "train"), ("/test_release/", "test")) if k in rel), None)
    if split is None:
        return "no train_release/test_release folder in the path"
    parent, name = rel.split("/")[-2:]
    return split, "real" if name in ("1.avi", "2.avi", "HR_1.avi") else "fake", f"{parent}_{_stem(name)}"


def _read_ids(path: Path) -> set[int]:
    return {int(t) for t in read_list_file(path)}


def msu_rule(root: Path) -> Callable[[str], tuple[str, str, str] | str | None]:
    """MSU-MFSD: split by subject id (``client(\\d{3})``) from ``train_sub_list.txt`` / ``test_sub_list.txt``."""
    split_of = {i: "train" for i in _read_ids(root / "train_sub_list.txt")}
    split_of.update({i: "test" for i in _read_ids(root / "test_sub_list.txt")})

    def rule(rel: str) -> tuple[str, str, str] | str | None:
        m = re.search(r"client(\d\d\d)", rel)
        cls = _label(rel, "/real/", "/attack/")
        if m is None or cls is None:
            return "no client id or real/attack class in the path"
        split = split_of.get(int(m.group(1)))
        if split is None:
            return f"subject {m.group(1)} is in neither subject list"
        return split, cls, _stem(rel.rsplit("/", 1)[-1])
    return rule


# name -> (config key of the raw root, extensions, rule factory(root)); output key ``{name}_split_face_ds``
MCIO_VIDEOS: dict[str, tuple[str, tuple[str, ...], Callable]] = {
    "replay": ("replay_path", (".mov",), lambda root: replay_rule),
    "msu": ("msu_path", (".mov", ".mp4"), msu_rule),
    "oulu": ("oulu_path", (".avi",), lambda root: oulu_rule),
    "casia": ("casia_path", (".avi",), lambda root: casia_rule),
}


def mcio_video_stage(cfg, name: str, summary: Summary) -> Stage:
    """Videos of one MCIO data set -> ``MCIO/frame/<name>/<split>/<real|fake>/{prefix}_frame{0,1}.png``."""
    key, exts, rule_factory = MCIO_VIDEOS[name]

    def make() -> list[Job]:
        root, out = Path(cfg[key]), Path(cfg[f"{name}_split_face_ds"])
        rule, jobs = rule_factory(root), []
        for v in list_files(root, exts):
            res = rule("/" + v.relative_to(root).as_posix())
            if isinstance(res, str) or (res is not None and res[0] == "dev" and not cfg.write_dev):
                summary.exclude(str(v), res if isinstance(res, str) else "dev split (write_dev False)")
            elif res is not None:
                jobs.append(Job("fas_video", str(v), (str(out / res[0] / res[1]),), res[2]))
        return jobs
    return (f"{name} chips", make)


def celeb_stage(cfg) -> Stage:
    """CelebA-Spoof images named by the celeb training lists: the last path component of a line encodes
    the source path with ``_`` for ``/``; chips go to ``MCIO/frame/celeb/{real|fake}/{name}``."""
    def make() -> list[Job]:
        txt, jobs = Path(cfg.finetune_data_path_fas) / "MCIO" / "txt", []
        for cls in ("fake", "real"):
            for line in read_list_file(txt / f"celeb_{cls}_train.txt"):
                name = line.rsplit("/", 1)[-1]
                src = Path(cfg.CelebA_Spoof_path) / name.replace("_", "/")
                jobs.append(Job("fas_image", str(src), (str(Path(cfg.celeb_split_face_ds) / cls / name),)))
        return jobs
    return ("celeb chips", make)


def require_lists(paths: list[Path]) -> None:
    """Fail before any work when a list file is missing (``FASDataError`` naming it, as the list reader does)."""
    for path in paths:
        if not path.is_file():
            read_list_file(path)


def mcio_stages(cfg, dataset: str, summary: Summary) -> list[Stage]:
    names = list(MCIO_VIDEOS) + ["celeb"] if dataset == "all" else [dataset]
    if "celeb" in names:
        require_lists([Path(cfg.finetune_data_path_fas) / "MCIO" / "txt" / f"celeb_{c}_train.txt"
                       for c in ("fake", "real")])
    return [celeb_stage(cfg) if n == "celeb" else mcio_video_stage(cfg, n, summary) for n in names]


# --- WCS --------------------------------------------------------------------------

def cefa_job(cfg, item: str, dst: Path) -> Job:
    """``{race}_{subject}_..._{NN}.jpg`` -> sample NN of ``{root}/{RACE}/{RACE}-{subject}/{item stem
    without NN}/profile``."""
    tokens = _stem(item).split("_")
    race = CEFA_RACES.get(tokens[0], tokens[0])
    folder = Path(cfg.cefa_path) / race / f"{race}-{tokens[1]}" / "_".join(tokens[:-1]) / "profile"
    return Job("cefa_frame", str(folder), (str(dst),), str(int(tokens[-1][:2])))


def wmca_job(cfg, item: str, dst: Path) -> Job:
    """``a_b_..._NN.jpg`` -> frame NN of ``{root}/a/b_....hdf5``."""
    m = re.fullmatch(r"(.+)_(\d+)\.jpg", item)
    if m is None:
        raise FASDataError(f"WMCA list item {item!r} does not end in _<frame>.jpg")
    return Job("wmca_frame", str(Path(cfg.wmca_path) / (m.group(1).replace("_", "/", 1) + ".hdf5")),
               (str(dst),), m.group(2))


def surf_source(item: str) -> str:
    """CASIA-SURF path from a flattened name: ``Training_{real|fake}_part_CLKJ_{ID}_{video...}_color_{n}.jpg``
    -> ``Training/{cls}_part/CLKJ_{ID}/{video...}/color/{n}.jpg``; Val/Testing names -> ``/`` joins."""
    t = item.split("_")
    if t[0] == "Training" and len(t) >= 8:
        return "/".join([t[0], f"{t[1]}_{t[2]}", f"{t[3]}_{t[4]}", "_".join(t[5:-2]), t[-2], t[-1]])
    return "/".join(t)


def surf_job(cfg, item: str, dst: Path) -> Job:
    return Job("border_image", str(Path(cfg.surf_path) / surf_source(item)), (str(dst),))


WCS_SOURCES: dict[str, Callable[..., Job]] = {"cefa": cefa_job, "wmca": wmca_job, "surf": surf_job}


def wcs_list_paths(cfg, name: str) -> list[Path]:
    """The six list files of a WCS data set (all six for SURF too, D24); missing shot lists are skipped."""
    paths = []
    for kind in WCS_LISTS:
        path = Path(cfg.WCS_txt_label) / f"{name}_{kind}.txt"
        if kind in OPTIONAL_LISTS and not path.is_file():
            logger.warning("optional list %s not found; skipped", path)
            continue
        paths.append(path)
    return paths


def wcs_stage(cfg, name: str) -> Stage:
    """Every line of the data set's lists -> ``WCS/frame/{line}`` (black borders removed)."""
    def make() -> list[Job]:
        seen, jobs = set(), []
        for path in wcs_list_paths(cfg, name):
            for line in read_list_file(path):
                if line not in seen:
                    seen.add(line)
                    jobs.append(WCS_SOURCES[name](cfg, line.rsplit("/", 1)[-1], Path(cfg.WCS_frame_path) / line))
        return jobs
    return (f"{name} frames", make)


def wcs_stages(cfg, dataset: str, summary: Summary) -> list[Stage]:
    names = list(WCS_SOURCES) if dataset == "all" else [dataset]
    require_lists([Path(cfg.WCS_txt_label) / f"{n}_{kind}.txt" for n in names for kind in WCS_LISTS
                   if kind not in OPTIONAL_LISTS])
    return [wcs_stage(cfg, n) for n in names]


# --- custom folders ----------------------------------------------------------------------------

def fas_custom_stages(src: str | Path, dst: str | Path, img_format: str = ".png") -> list[Stage]:
    """Any folder: each image -> one chip ``{flat name}{img_format}``; each video -> two chips
    ``{flat name}_frame{0,1}{img_format}`` by the original two-frame rule."""
    src, dst = Path(src), Path(dst)

    def make() -> list[Job]:
        images, videos = custom_inputs(src, dst)
        jobs = [Job("fas_image", str(f), (str(dst / (flat_name(f.with_suffix(""), src) + img_format)),))
                for f in images]
        return jobs + [Job("fas_video", str(v), (str(dst),), flat_name(v.with_suffix(""), src)) for v in videos]
    return [("custom chips", make)]


FAS_DATASETS: dict[str, tuple[tuple[str, ...], Callable[..., list[Stage]]]] = {
    "MCIO": (("all", *MCIO_VIDEOS, "celeb"), mcio_stages),
    "WCS": (("all", *WCS_SOURCES), wcs_stages),
}
