"""DfD and DiFF test/training sets (tree 1.4.3), as small tables plus a planner each."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from fsvfm.preprocess.jobs import Job
from fsvfm.preprocess.layouts import (
    DIFF_SPLITS,
    DIFF_SUBSETS,
    after_faceforensics,
    copy_jobs,
    ff_binary_stages,
    flat_name,
    frames_folder,
    list_files,
    require_files,
    unique_names,
    video_jobs,
)
from fsvfm.preprocess.runner import Stage, Summary
from fsvfm.util.naming import FRAME_SEPARATOR, IMAGE_EXTENSIONS

# Celeb-DF family: config-key prefix, (top folder, class) pairs, recursive scan.
# v2 leaves out the listed YouTube-real test videos on purpose (common cross-data-set protocol, D17).
CELEB_DF = {
    "CelebDFv1": ("CelebDFv1", (("Celeb-real", "real"), ("YouTube-real", "real"), ("Celeb-synthesis", "fake")),
                  False),
    "CelebDFv2": ("CelebDFv2", (("Celeb-real", "real"), ("Celeb-synthesis", "fake")), False),
    "CelebDF++": ("CelebDF_plusplus", (("Celeb-real", "real"), ("Celeb-synthesis", "fake")), True),
}
WILD_DEEPFAKE = (("fake_test", "fake"), ("real_test", "real"))


def dfd_stages(cfg, summary: Summary) -> list[Stage]:
    """All DFD videos as a test set: ``DS_DFD_binary_cls/{c}/test/{fake_DeepFakeDetection,real_actors}``."""
    comp, n = cfg.DFD_compression, cfg.DFD_num_frames
    sides = ((cfg.DFD_real, "real_actors", "actors_"),
             (cfg.DFD_fake, "fake_DeepFakeDetection", "DeepFakeDetection_"))

    def frames_dir(src: str) -> Path:
        return Path(cfg.DFD_split_face_ds) / frames_folder(n) / after_faceforensics(src) / comp

    def extract() -> list[Job]:
        return video_jobs([(v, frames_dir(src), v.stem) for src, _, _ in sides
                           for v in list_files(Path(src) / comp, (".mp4",))], n)

    def copies() -> list[Job]:
        test = Path(cfg.DFD_binary_cls_ds) / comp / "test"
        return [j for src, cls, prefix in sides for j in copy_jobs(frames_dir(src), test / cls, prefix,
                                                                    cfg.img_format)]
    return [("DFD extract", extract), ("DFD copy", copies)]


def read_test_list(path: Path) -> set[str]:
    """``List_of_testing_videos.txt``: ``<label> <dir>/<file>.mp4`` -> {``<dir>/<file>.mp4``}."""
    with open(path, encoding="utf-8") as f:
        return {line.strip()[2:] for line in f if line.strip()}


def celeb_df_stages(cfg, dataset: str) -> list[Stage]:
    prefix, folders, recursive = CELEB_DF[dataset]
    root, n = Path(cfg[f"{prefix}_path"]), cfg[f"{prefix}_num_frames"]
    out = Path(cfg[f"{prefix}_split_face_ds"]) / frames_folder(n) / "test"

    def make() -> list[Job]:
        require_files(f"{dataset} test list", {f"{prefix}_path": root / "List_of_testing_videos.txt"})
        listed = read_test_list(root / "List_of_testing_videos.txt")
        videos = [(v, out / cls, v.relative_to(root).with_suffix("").as_posix().replace("/", "_"))
                  for top, cls in folders for v in list_files(root / top, (".mp4",), recursive)
                  if v.relative_to(root).as_posix() in listed]
        return video_jobs(videos, n)
    return [(f"{dataset} extract", make)]


def dfdc_stages(cfg, summary: Summary) -> list[Stage]:
    """DFDC public test set, labels from ``labels.csv`` (0 real, 1 fake); unlabelled videos excluded (D12)."""
    root, n = Path(cfg.DFDC_path), cfg.DFDC_num_frames
    out = Path(cfg.DFDC_split_face_ds) / frames_folder(n) / "test"

    def make() -> list[Job]:
        require_files("DFDC labels", {"DFDC_path": root / "labels.csv"})
        with open(root / "labels.csv", newline="", encoding="utf-8") as f:
            labels = {row["filename"]: int(float(row["label"])) for row in csv.DictReader(f)}
        videos = []
        for v in list_files(root / "ori_videos", (".mp4",)):
            if v.name not in labels:
                summary.exclude(str(v), "not in labels.csv")
                continue
            videos.append((v, out / ("real", "fake")[labels[v.name]], v.stem))
        return video_jobs(videos, n)
    return [("DFDC extract", make)]


def dfdc_preview_stages(cfg, summary: Summary) -> list[Stage]:
    """DFDC preview: ``dataset.json`` entries with ``set == "test"``; name = first path part + stem,
    or the whole flattened path where that collides (D13)."""
    root, n = Path(cfg.DFDC_P_path), cfg.DFDC_P_num_frames
    out = Path(cfg.DFDC_P_split_face_ds) / frames_folder(n) / "test"

    def make() -> list[Job]:
        require_files("DFDC preview metadata", {"DFDC_P_path": root / "dataset.json"})
        with open(root / "dataset.json", encoding="utf-8") as f:
            meta = json.load(f)
        test = sorted((k, v["label"]) for k, v in meta.items() if v.get("set") == "test")
        names = unique_names([(f"{Path(k).parts[0]}_{Path(k).stem}",
                               Path(k).with_suffix("").as_posix().replace("/", "_")) for k, _ in test])
        return video_jobs([(root / k, out / label, name) for (k, label), name in zip(test, names)], n)
    return [("DFDC_P extract", make)]


def wild_deepfake_stages(cfg, summary: Summary) -> list[Stage]:
    """Already-cropped frames: copy ``{fake,real}_test/**.png`` to ``test/{fake,real}/``, named
    ``{source dir, / -> _}_frame_{file}`` so each source folder acts as one video."""
    root, out = Path(cfg.DFIW_path), Path(cfg.DFIW_split_face_ds) / "test"

    def make() -> list[Job]:
        return [Job("copy", str(f), (str(out / cls / f"{flat_name(f.parent, root)}{FRAME_SEPARATOR}{f.name}"),))
                for sub, cls in WILD_DEEPFAKE for f in list_files(root / sub, (".png",))]
    return [("WildDeepfake copy", make)]


def diff_fake_name(path: Path, subset_root: Path) -> str:
    """``{subset}/Roop/a/0001.jpg`` -> ``_Roop_a_0001.png`` (all outputs are PNG)."""
    rel = path.relative_to(subset_root).with_suffix("").as_posix()
    return "_" + rel.replace("/", "_").replace(".", "_") + ".png"


def diff_stages(cfg, summary: Summary) -> list[Stage]:
    """DiFF test and val subsets (D16): fakes per subset; the real images are cropped once and
    written into the ``real/`` folder of every subset (D15)."""
    def out(split: str, subset: str, cls: str) -> Path:
        return Path(cfg.DiFF_split_face_ds) / f"{split}_subsets" / subset / split / cls

    def make() -> list[Job]:
        jobs = []
        for split in DIFF_SPLITS:
            for subset in DIFF_SUBSETS:
                sroot = Path(cfg.DiFF_path) / split / subset
                jobs += [Job("crop_image", str(f), (str(out(split, subset, "fake") / diff_fake_name(f, sroot)),))
                         for f in list_files(sroot, IMAGE_EXTENSIONS)]
            rroot = Path(cfg.DiFF_real_path) / split
            reals = list_files(rroot, IMAGE_EXTENSIONS)
            names = unique_names([(f.name, flat_name(f, rroot)) for f in reals])
            jobs += [Job("crop_image", str(f), tuple(str(out(split, s, "real") / name) for s in DIFF_SUBSETS))
                     for f, name in zip(reals, names)]
        return jobs
    return [("DiFF crop", make)]


FINETUNE_DATASETS: dict[str, Callable[..., list[Stage]]] = {
    "FF++_all": lambda cfg, s: ff_binary_stages(cfg, s, each=False),
    "FF++_each": lambda cfg, s: ff_binary_stages(cfg, s, each=True),
    "DFD": dfd_stages,
    "CelebDFv1": lambda cfg, s: celeb_df_stages(cfg, "CelebDFv1"),
    "CelebDFv2": lambda cfg, s: celeb_df_stages(cfg, "CelebDFv2"),
    "CelebDF++": lambda cfg, s: celeb_df_stages(cfg, "CelebDF++"),
    "DFDC": dfdc_stages,
    "DFDC_P": dfdc_preview_stages,
    "WildDeepfake": wild_deepfake_stages,
    "DiFF": diff_stages,
}
