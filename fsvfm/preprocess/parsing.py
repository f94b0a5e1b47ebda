"""One interface over the parsing backends, and the pre-training data set writer.

A backend has ``name`` and ``parse(rgb, rect=None) -> (H, W) uint8 LaPa map | None``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fsvfm.preprocess.faces import FaceCropper
from fsvfm.preprocess.labels import colorize, with_legend
from fsvfm.preprocess.parse_facer import FacerParser, facer_available
from fsvfm.preprocess.parse_landmarks import LandmarkParser
from fsvfm.util.fileio import atomic_path, atomic_write_image

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "facer", "landmarks")
IMAGE_DIR, MAP_DIR, VIS_DIR = "images", "parsing_maps", "vis_parsing_maps"


def resolve_backend(backend: str = "auto", model_dir: str | Path | None = None) -> str:
    """``auto`` -> ``facer`` when pyfacer and its weights are present, else ``landmarks``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "facer" if facer_available(model_dir) else "landmarks"
    return backend


def build_parser(backend: str = "auto", model_dir: str | Path | None = None, device: str | None = None,
                 upsample: int = 1, face_select: str = "first"):
    name = resolve_backend(backend, model_dir)
    if name == "facer":
        return FacerParser(model_dir=model_dir, device=device)
    return LandmarkParser(upsample=upsample, face_select=face_select)


def to_parser_input(rgb: np.ndarray, face_size: int = 224) -> Image.Image:
    """Resize to ``face_size`` square with bicubic resampling, as the original (PIL)."""
    return Image.fromarray(rgb).resize((face_size, face_size), Image.BICUBIC)


def crop_for_parsing(cropper: FaceCropper, bgr: np.ndarray,
                     face_size: int = 224) -> tuple[Image.Image, tuple[int, int, int, int]] | None:
    """The face crop of a BGR photo as the parser's input (RGB, ``face_size`` square) and the face box
    (left, top, right, bottom) in it; None when no face is kept."""
    res = cropper.crop(bgr)
    return None if res is None else parser_input(*res, face_size)


def parser_input(crop: np.ndarray, rect: tuple[int, int, int, int],
                 face_size: int = 224) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A BGR face crop (S, S, 3) and its face box -> the parser's input (RGB, ``face_size`` square)
    and the box scaled into it."""
    scale = face_size / crop.shape[0]
    image = to_parser_input(np.ascontiguousarray(crop[:, :, ::-1]), face_size)
    return image, tuple(int(round(v * scale)) for v in rect)


def output_paths(out_root: str | Path, stem: str) -> tuple[Path, Path]:
    root = Path(out_root)
    return root / IMAGE_DIR / f"{stem}.png", root / MAP_DIR / f"{stem}.npy"


def save_parsed(out_root: str | Path, stem: str, image: Image.Image, label_map: np.ndarray,
                save_vis: bool = False) -> None:
    """Write ``images/{stem}.png`` and ``parsing_maps/{stem}.npy`` (int8, (1, H, W)); map first, so an
    interrupted run never leaves an image without its map (the image marks the item as done)."""
    img_path, map_path = output_paths(out_root, stem)
    with atomic_path(map_path) as tmp, open(tmp, "wb") as f:
        np.save(f, label_map.astype(np.int8)[None])
    if save_vis:
        save_visualisation(Path(out_root) / VIS_DIR, stem, np.asarray(image.convert("RGB")), label_map)
    with atomic_path(img_path) as tmp:
        image.save(tmp, format="PNG")


def save_visualisation(vis_dir: Path, stem: str, rgb: np.ndarray, label_map: np.ndarray) -> None:
    """``{stem}.png`` colour map and ``{stem}_with_pm.png`` overlay 0.6 image + 0.6 colours (BGR), each
    with the label legend on its right."""
    colours = colorize(label_map)
    overlay = cv2.addWeighted(np.ascontiguousarray(rgb[:, :, ::-1]), 0.6, colours, 0.6, 0)
    for name, img in ((f"{stem}.png", with_legend(colours)), (f"{stem}_with_pm.png", with_legend(overlay))):
        atomic_write_image(vis_dir / name, img)
