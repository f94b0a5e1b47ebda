"""Raw data-set layouts -> job lists and output trees.

Each planner takes a config (yacs node or any attribute object with resolved paths) and a
``Summary`` that collects inputs excluded at planning time, and returns stages for
``runner.run_stages``. Extraction always runs (finished frames are skipped), which replaces the
original's "folder exists" checks and also completes an interrupted extraction.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from fsvfm.preprocess.jobs import Job
from fsvfm.preprocess.runner import Stage, Summary
from fsvfm.preprocess.video import VIDEO_EXTENSIONS
from fsvfm.util.errors import UsageError
from fsvfm.util.naming import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DIFF_SUBSETS = ("FS", "FE", "I2I", "T2I")
DIFF_SPLITS = ("test", "val")
VIDEO_FRAMES_DIR = "video_frames"   # face_parse.py custom: frame crops of the source videos


def list_files(root: str | Path, exts: Iterable[str], recursive: bool = True) -> list[Path]:
    """Sorted files under ``root`` whose lower-case suffix is in ``exts``; [] if ``root`` is absent."""
    root = Path(root)
    if not root.is_dir():
        logger.warning("folder not found: %s", root)
        return []
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def flat_name(path: Path, base: Path) -> str:
    """``a/b/c.jpg`` relative to ``base`` -> ``a_b_c.jpg``."""
    return path.relative_to(base).as_posix().replace("/", "_")


def frames_folder(num_frames: int | None) -> str:
    return "all_frames" if num_frames is None else f"{num_frames}_frames"


def after_faceforensics(path: str) -> str:
    """The part of an FF++ path after ``FaceForensics/`` (e.g. ``original_sequences/youtube``)."""
    p = Path(path).as_posix().rstrip("/")
    return p.split("FaceForensics/", 1)[1] if "FaceForensics/" in p else "/".join(p.split("/")[-2:])


def unique_names(items: list[tuple[str, str]]) -> list[str]:
    """Keep each preferred name unless two items share it; those get their fallback name (D13, D15)."""
    counts: dict[str, int] = {}
    for name, _ in items:
        counts[name] = counts.get(name, 0) + 1
    out = []
    for name, fallback in items:
        if counts[name] > 1:
            logger.warning("name collision %s -> %s", name, fallback)
            name = fallback
        out.append(name)
    return out


def video_jobs(videos: Iterable[tuple[Path, Path, str]], num_frames: int | None) -> list[Job]:
    """(video file, output folder, video name) -> one ``crop_video`` job each."""
    return [Job("crop_video", str(v), (str(d),), name, num_frames) for v, d, name in videos]


def copy_jobs(src_dir: Path, dst_dir: Path, prefix: str, img_format: str) -> list[Job]:
    """Copy every ``img_format`` file of ``src_dir`` to ``dst_dir/{prefix}{name}``."""
    return [Job("copy", str(f), (str(dst_dir / f"{prefix}{f.name}"),))
            for f in list_files(src_dir, (img_format,), recursive=False)]


def image_crop_jobs(roots: Iterable[str], dst: str | Path) -> list[Job]:
    """VF2/YTF rule: one flat folder, name = path relative to the root's parent (``os.path.dirname``
    of the configured string, so a root ending in ``/`` names relative to itself), ``/`` -> ``_``."""
    jobs = []
    for root in roots:
        base = Path(os.path.dirname(str(root)))
        jobs += [Job("crop_image", str(f), (str(Path(dst) / flat_name(f, base)),))
                 for f in list_files(root, IMAGE_EXTENSIONS)]
    return jobs


def require_files(what: str, files: dict[str, str | Path]) -> None:
    """``UsageError`` naming every file of ``files`` (config key -> path) that is not there, so a
    missing download is one line with the fix, not a bare ``[Errno 2]``."""
    missing = [f"{path} (config key {key})" for key, path in files.items() if not Path(path).is_file()]
    if missing:
        raise UsageError(f"{what} not found: {', '.join(missing)}; download the data set as datasets/README.md "
                         "describes, or set the key (--opts KEY PATH or --config FILE)")


# --- FaceForensics++ -------------------------------------------------------------------------


def ff_split_of(cfg) -> dict[str, str]:
    """id -> split from the official JSONs (lists of [target, source] id pairs)."""
    keys = ("FF_train_split", "FF_val_split", "FF_test_split")
    require_files("FaceForensics++ split file(s)", {k: cfg[k] for k in keys})
    paths = [cfg[k] for k in keys]
    out = {}
    for split, path in zip(SPLITS, paths):
        with open(path, encoding="utf-8") as f:
            for pair in json.load(f):
                out.update({vid: split for vid in pair})
    return out


def ff_video_jobs(cfg, src_root: str, out_base: Path, num_frames: int | None, summary: Summary,
                  split_of: dict[str, str]) -> list[Job]:
    """Videos ``{src_root}{compression}/videos/*.mp4`` -> ``out_base/{split}/``; a video follows the
    split of its first three characters (the target id); a video in no split is excluded (D10)."""
    jobs = []
    for v in list_files(Path(src_root) / cfg.FF_compression / "videos", (".mp4",), recursive=False):
        split = split_of.get(v.name[:3])
        if split is None:
            summary.exclude(str(v), "id in no split file")
            continue
        jobs += video_jobs([(v, out_base / split, v.stem)], num_frames)
    return jobs


def ff_real_dir(cfg, num_frames: int | None) -> Path:
    return (Path(cfg.FF_split_face_ds) / frames_folder(num_frames) / after_faceforensics(cfg.FF_real_path)
            / cfg.FF_compression)


def ff_fake_dir(cfg, manip: str) -> Path:
    return (Path(cfg.FF_split_face_ds) / frames_folder(cfg.FF_num_frames)
            / after_faceforensics(cfg.FF_fake_path) / manip / cfg.FF_compression)


def ff_real_stage(cfg, num_frames: int | None, summary: Summary) -> Stage:
    return ("FF++ real", lambda: ff_video_jobs(cfg, cfg.FF_real_path, ff_real_dir(cfg, num_frames),
                                               num_frames, summary, ff_split_of(cfg)))


def ff_fake_stage(cfg, summary: Summary) -> Stage:
    def make() -> list[Job]:
        split_of = ff_split_of(cfg)
        return [j for m in cfg.FF_manipulation_list
                for j in ff_video_jobs(cfg, str(Path(cfg.FF_fake_path) / m), ff_fake_dir(cfg, m),
                                       cfg.FF_num_frames, summary, split_of)]
    return ("FF++ fake", make)


def ff_copy_jobs(cfg, real_frames: int | None, each: bool) -> list[Job]:
    """``DS_FF++_all_cls/{c}/{split}/{fake_four,real_youtube}`` or
    ``DS_FF++_each_cls/{c}/{M}/{split}/{fake_M,real_youtube}``, file names prefixed by their source."""
    fmt, jobs = cfg.img_format, []
    for split in SPLITS:
        real = ff_real_dir(cfg, real_frames) / split
        if not each:
            root = Path(cfg.FF_all_binary_cls_ds) / cfg.FF_compression / split
            jobs += copy_jobs(real, root / "real_youtube", "youtube_", fmt)
        for m in cfg.FF_manipulation_list:
            if each:
                root = Path(cfg.FF_each_binary_cls_ds) / cfg.FF_compression / m / split
                jobs += copy_jobs(real, root / "real_youtube", "youtube_", fmt)
            jobs += copy_jobs(ff_fake_dir(cfg, m) / split, root / (f"fake_{m}" if each else "fake_four"),
                              f"{m}_", fmt)
    return jobs


def ff_binary_stages(cfg, summary: Summary, each: bool) -> list[Stage]:
    """``FF++_all`` (real at 4x the fake frame count, one ``fake_four`` class) or ``FF++_each``."""
    n = cfg.FF_num_frames
    real_frames = n if each or n is None else 4 * n
    return [ff_real_stage(cfg, real_frames, summary), ff_fake_stage(cfg, summary),
            ("FF++ copy", lambda: ff_copy_jobs(cfg, real_frames, each))]


# --- pre-training sets -----------------------------------------------------------

def pretrain_stages(cfg, dataset: str, summary: Summary) -> list[Stage]:
    if dataset == "VF2":
        return [("VF2 crop", lambda: image_crop_jobs(cfg.VGGFace2_path, cfg.VGGFace2_face_ds))]
    if dataset == "YTF":
        return [("YTF crop", lambda: image_crop_jobs(cfg.YTFace_path, cfg.YTFace_face_ds))]
    if dataset == "FF++_o":
        return [ff_real_stage(cfg, cfg.FF_num_frames, summary)]
    raise ValueError(f"unknown pre-training data set {dataset!r}")


PARSE_SOURCES: dict[str, tuple[str, str]] = {
    "VF2": ("VGGFace2_path_for_parsing", "VGGFace2_parse_ds_path"),
    "YTF": ("YTFace_path_for_parsing", "YTFace_parse_ds_path"),
    "FF++_o": ("FF_real_face_paths_for_parsing", "FF_face_parse_ds_path"),
}


def named_parse_jobs(files: list[tuple[Path, Path, str]], dst_root: str | Path) -> list[Job]:
    """(image, its source root, job kind) -> jobs writing ``dst_root/{images,parsing_maps}/{stem}``; the
    stem is the file name without its extension, or the flattened relative path where two collide."""
    names = unique_names([(f.stem, flat_name(f.with_suffix(""), base)) for f, base, _ in files])
    return [Job(kind, str(f), (str(dst_root),), n) for (f, _, kind), n in zip(files, names)]


def parse_jobs(src_dirs: Iterable[str | Path], dst_root: str | Path, crop: bool = False) -> list[Job]:
    """Every image under ``src_dirs`` -> a ``parse`` (or, with ``crop``, ``crop_parse``) job."""
    dirs = [src_dirs] if isinstance(src_dirs, (str, Path)) else src_dirs
    kind = "crop_parse" if crop else "parse"
    return named_parse_jobs([(f, Path(s), kind) for s in dirs for f in list_files(s, IMAGE_EXTENSIONS)], dst_root)


def parse_stages(cfg, dataset: str) -> list[Stage]:
    src_key, dst_key = PARSE_SOURCES[dataset]
    src = cfg[src_key] if isinstance(cfg[src_key], (list, tuple)) else [cfg[src_key]]
    return [(f"{dataset} parse", lambda: parse_jobs(src, cfg[dst_key]))]


def custom_inputs(src: str | Path, dst: str | Path, log: bool = True) -> tuple[list[Path], list[Path]]:
    """Images and videos under ``src`` (recursive, outside ``dst``), logged with their counts."""
    out = Path(dst).resolve()

    def inputs(exts):
        return [f for f in list_files(src, exts) if not f.resolve().is_relative_to(out)]
    images, videos = inputs(IMAGE_EXTENSIONS), inputs(VIDEO_EXTENSIONS)
    if log:
        logger.info("%s: %d image(s), %d video(s)", src, len(images), len(videos))
    return images, videos


def custom_video_jobs(src: Path, videos: list[Path], dst: Path, num_frames: int | None) -> list[Job]:
    """Sampled face crops of every video, named by its path relative to ``src`` (``/`` -> ``_``)."""
    return video_jobs([(v, dst, flat_name(v.with_suffix(""), src)) for v in videos], num_frames)


def custom_stages(src: str | Path, dst: str | Path, num_frames: int | None) -> list[Stage]:
    """Any folder: images -> flat crops (relative path, ``/`` -> ``_``), videos -> sampled frames."""
    src, dst = Path(src), Path(dst)

    def make() -> list[Job]:
        images, videos = custom_inputs(src, dst)
        jobs = [Job("crop_image", str(f), (str(dst / flat_name(f, src)),)) for f in images]
        return jobs + custom_video_jobs(src, videos, dst, num_frames)
    return [("custom crop", make)]


def custom_parse_stages(src: str | Path, dst: str | Path, num_frames: int | None,
                        crop: bool = False, check_crops: bool = True) -> list[Stage]:
    """Any folder -> pre-training set: videos first give face crops of sampled frames in
    ``dst/VIDEO_FRAMES_DIR`` (as ``custom_stages``), then those and the photos are parsed (photos
    cropped first with ``crop``; without it, with ``check_crops``, a photo that is not a face crop
    is refused)."""
    src, dst = Path(src), Path(dst)
    frames = dst / VIDEO_FRAMES_DIR

    def extract() -> list[Job]:
        return custom_video_jobs(src, custom_inputs(src, dst)[1], frames, num_frames)

    def parse() -> list[Job]:
        kind = "crop_parse" if crop else "parse_checked" if check_crops else "parse"
        files = [(f, src, kind) for f in custom_inputs(src, dst, log=False)[0]]
        if frames.is_dir():
            files += [(f, frames, "parse") for f in list_files(frames, IMAGE_EXTENSIONS)]
        return named_parse_jobs(files, dst)
    return [("custom video frames", extract), ("custom parse", parse)]


def run_name_for(dataset: str) -> str:
    return "preprocess_" + dataset.replace("+", "p").replace("/", "_")

