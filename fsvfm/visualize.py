"""Pictures of what the model does: parsing maps with their legend, CRFR-P masks, reconstructions.

A small API shared by the command line and the web app (pre-training's TensorBoard grids are
``fsvfm.reconstruction``, which needs no face stack)::

    crop, parsing_map = prepare_face("photo.jpg")          # detect, crop, parse (fsvfm.preprocess)
    pretrained = load_pretrained("checkpoint-1.pth")        # online network + its normalisation
    figure = masking_figure(crop, parsing_map, "all", pretrained)   # (H, W, 3) uint8 RGB

    python -m fsvfm.visualize masking --image FACE [--checkpoint CKPT] [--region NAME|all] --out fig.png

Reconstructions follow MAE's demo: with ``norm_pix_loss`` the network predicts per-patch
normalised pixels, which are mapped back with each patch's own mean and variance (taken from the
input image) before undoing the data-set normalisation.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from fsvfm.data.device import DeviceNormalize
from fsvfm.masking import NUM_CHOOSABLE_REGIONS, REGION_GROUPS, crfrp_masks
from fsvfm.preprocess.jobs import Options, Worker
from fsvfm.preprocess.labels import LAPA_MEANINGS, colorize, label_colours_rgb
from fsvfm.preprocess.parsing import BACKENDS, crop_for_parsing, resolve_backend, to_parser_input
from fsvfm.reconstruction import denormalise, masking_views, reconstruct
from fsvfm.registry import create_model
from fsvfm.util.args import parse_model_kwargs
from fsvfm.util.checkpoint import (
    CheckpointError,
    args_dict,
    load_checkpoint,
    load_model_weights,
    model_state_from,
)
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.fileio import atomic_write_image
from fsvfm.util.images import UnreadableImageError, read_rgb
from fsvfm.util.norm_stats import checkpoint_mean_std

logger = logging.getLogger(__name__)

REGION_NAMES = tuple(name for name, _ in REGION_GROUPS[:NUM_CHOOSABLE_REGIONS])
FACE_SIZE, PATCH_SIZE, MASK_RATIO = 224, 16, 0.75       # without a checkpoint: the paper's setting
PANEL_INCHES = 2.0
FIGURE_FORMATS = (".png", ".jpg", ".jpeg", ".gif")      # what --out may end with (OpenCV encodes them)


class VisualizeError(DataError):
    """A user input the pictures cannot be made from (unreadable image, no face, wrong model)."""


@dataclass
class Pretrained:
    """An online pre-training network with what its inputs need: normalisation and mask ratio."""
    model: torch.nn.Module
    mean: list[float]
    std: list[float]
    mask_ratio: float = MASK_RATIO
    source: str = ""

    @property
    def input_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# ------------------------------------------------------------------------------------ inputs
def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> Pretrained:
    """Rebuild the online network of a pre-training checkpoint (``checkpoint-N.pth``, ours or released).

    The model name, input size, ``--model_kwargs`` and ``--norm_pix_loss`` come from the file;
    mean/std from its ``norm_stats`` or the ``pretrain_ds_mean_std.txt`` beside it (ImageNet when it
    was trained with ``--normalize_from_IMN``). Raises ``CheckpointError`` naming the file.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("network") == "target":
        raise CheckpointError(f"{path} is the EMA target network, which has no pixel decoder; give the "
                              f"online file beside it ({Path(path).name.replace('checkpoint-te-', 'checkpoint-')})")
    args = args_dict(ckpt)
    name = ckpt.get("model_name") or args.get("model")
    try:
        overrides = parse_model_kwargs(args.get("model_kwargs") or args.get("model_overrides"))
        model = create_model(str(name), family="pretrain", img_size=int(args.get("input_size", FACE_SIZE)),
                             norm_pix_loss=bool(args.get("norm_pix_loss", False)), **overrides)
    except ValueError as e:
        raise CheckpointError(f"{path}: not a pre-training checkpoint ({e}); give a checkpoint-N.pth "
                              "written by main_pretrain.py") from e
    load_model_weights(model, model_state_from(ckpt, path), strict=True, source=path)
    mean, std, source = checkpoint_mean_std(ckpt, path, imagenet=bool(args.get("normalize_from_IMN")))
    logger.info("%s: %s, norm_pix_loss=%s, mean/std from %s", path, name, model.norm_pix_loss, source)
    return Pretrained(model.to(device).eval(), mean, std, float(args.get("mask_ratio", MASK_RATIO)), str(path))


def _read_rgb(image: str | os.PathLike | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        if arr.dtype != np.uint8 or arr.shape[-1] not in (3, 4):
            raise VisualizeError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        return np.ascontiguousarray(arr[..., :3])
    if not os.path.exists(image):
        raise VisualizeError(f"image not found: {image}")
    try:
        return np.asarray(read_rgb(image))
    except FileNotFoundError as e:
        raise VisualizeError(f"image not found: {image}") from e
    except UnreadableImageError as e:
        raise VisualizeError(str(e)) from e


@functools.lru_cache(maxsize=4)
def _worker(backend: str) -> Worker:
    """The preprocessing worker (dlib cropper + parser), built once per backend."""
    return Worker(Options(backend=resolve_backend(backend)))


def prepare_face(image: str | os.PathLike | np.ndarray, backend: str = "auto", crop: bool = True,
                 face_size: int = FACE_SIZE, check_crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A photo -> ``(face (S, S, 3) uint8 RGB, parsing map (S, S) uint8 LaPa labels)``, S = ``face_size``.

    ``image``: a file path or an (H, W, 3) uint8 RGB array. ``crop``: dlib detection and the square
    x1.3 crop of preprocessing (as for the pre-training data); ``False`` takes the whole image as
    the face; with ``check_crop`` an image that is not a face crop (no face, several faces, a face far
    smaller than the frame) is refused. ``backend``: parser as in ``face_parse.py`` (``auto`` = FACER
    when installed, else the landmark parser). Raises ``VisualizeError`` when the image is unreadable,
    holds no face or is refused.
    """
    rgb = _read_rgb(image)
    where = image if not isinstance(image, np.ndarray) else "the image"
    worker = _worker(backend)
    if crop:
        res = crop_for_parsing(worker.cropper, np.ascontiguousarray(rgb[:, :, ::-1]), face_size)
        if res is None:
            raise VisualizeError(f"no face found in {where} by dlib; give a photo with a frontal face")
        face_img, rect = res
    else:
        problem = worker.cropper.crop_problem(rgb) if check_crop else None
        if problem is not None:
            raise VisualizeError(f"{where} is not a face crop ({problem}); let its face be detected and cropped "
                                 "first (no --no_crop / 'already a face crop' unticked), or --skip_crop_check "
                                 "to use the whole image")
        face_img, rect = to_parser_input(rgb, face_size), None
    face = np.asarray(face_img)
    label_map = worker.parser.parse(face, rect)
    if label_map is None:
        raise VisualizeError(f"the {worker.parser.name} parser found no face in {where}")
    return face, label_map.astype(np.uint8)


# ------------------------------------------------------------------------------------ tensors
def region_index(region: str | int) -> int:
    """Index into ``REGION_GROUPS`` of a choosable region name (or index)."""
    if isinstance(region, int) and 0 <= region < NUM_CHOOSABLE_REGIONS:
        return region
    if region in REGION_NAMES:
        return REGION_NAMES.index(region)
    raise VisualizeError(f"unknown region {region!r}; choose from {', '.join(REGION_NAMES)} or all")


def face_views(face_rgb: np.ndarray, parsing_map: np.ndarray, region: str | int,
               pretrained: Pretrained | None = None, mask_ratio: float | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """``masking_views`` of one face as (S, S, 3) uint8 RGB images, plus ``face`` and ``parsing``.

    face_rgb: (H, W, 3) uint8; parsing_map: (H, W) LaPa labels. Both are resized to the network's
    input size (224 without a model). The CRFR-P mask is drawn with a generator seeded by ``seed``.
    """
    size = pretrained.input_size if pretrained else FACE_SIZE
    patch = pretrained.patch_size if pretrained else PATCH_SIZE
    ratio = mask_ratio if mask_ratio is not None else (pretrained.mask_ratio if pretrained else MASK_RATIO)
    pixels = torch.from_numpy(np.array(face_rgb, dtype=np.uint8)).permute(2, 0, 1)[None]
    labels = torch.from_numpy(np.array(parsing_map, dtype=np.uint8))[None, None]
    if pixels.shape[-1] != size or pixels.shape[-2] != size:  # uint8 in and out, as in PretrainTransform
        pixels = TF.resize(pixels, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        labels = F.interpolate(labels.float(), size=(size, size), mode="nearest").to(torch.uint8)
    images = pixels.float() / 255
    img_mask, region_mask, _ = crfrp_masks(labels[:, 0], patch, ratio, region=region_index(region),
                                           generator=torch.Generator().manual_seed(seed))
    recon = None
    if pretrained is not None:
        dev = pretrained.device
        normed = DeviceNormalize(pretrained.mean, pretrained.std, dev)(pixels)
        recon = denormalise(reconstruct(pretrained.model, normed, img_mask).cpu(),
                             pretrained.mean, pretrained.std)
    views = masking_views(images, img_mask, region_mask, patch, recon)
    views["face"] = images
    out = {k: (v[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for k, v in views.items()}
    out["parsing"] = np.ascontiguousarray(colorize(labels[0, 0].numpy())[:, :, ::-1])
    return out


# ------------------------------------------------------------------------------------ figures
def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _show(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def legend_handles() -> list[Patch]:
    """Matplotlib legend entries of the LaPa labels, from the one colour table (``labels.py``)."""
    return [Patch(facecolor=c / 255.0, edgecolor="0.3", label=f"{k} {m}")
            for k, (m, c) in enumerate(zip(LAPA_MEANINGS, label_colours_rgb()))]


def masking_figure(face_rgb: np.ndarray, parsing_map: np.ndarray, region: str | int = "all",
                   pretrained: Pretrained | None = None, mask_ratio: float | None = None, seed: int = 0,
                   dpi: int = 100) -> np.ndarray:
    """The CRFR-P figure of one face as an (H, W, 3) uint8 RGB array.

    Top row: the face, its parsing map and the label legend. Then one row per region (``region``
    or all six with ``"all"``): the CRFR-P mask (covered region red, other masked patches dark),
    the masked input and, with ``pretrained``, the reconstruction and the reconstruction pasted
    into the visible patches. Size: ``W = cols * 2 * dpi`` (cols 4 with a model, else 3),
    ``H = (1 + rows) * 2 * dpi``.
    """
    regions = REGION_NAMES if region == "all" else (REGION_NAMES[region_index(region)],)
    views = [face_views(face_rgb, parsing_map, r, pretrained, mask_ratio, seed) for r in regions]
    ncols = 4 if pretrained is not None else 3
    fig = Figure(figsize=(ncols * PANEL_INCHES, (1 + len(regions)) * PANEL_INCHES), dpi=dpi,
                 layout="constrained")
    grid = fig.add_gridspec(1 + len(regions), ncols)
    _show(fig.add_subplot(grid[0, 0]), views[0]["face"], "face crop")
    _show(fig.add_subplot(grid[0, 1]), views[0]["parsing"], "LaPa parsing map")
    legend_ax = fig.add_subplot(grid[0, 2:])
    legend_ax.axis("off")
    legend_ax.legend(handles=legend_handles(), loc="center", ncol=ncols - 2, fontsize=8, frameon=False,
                     handlelength=1.2, title="parsing labels", title_fontsize=9)
    titles = {"mask": "CRFR-P mask: {}", "masked": "masked input", "reconstruction": "reconstruction",
              "pasted": "reconstruction + visible"}
    for row, (name, v) in enumerate(zip(regions, views), start=1):
        for col, key in enumerate(k for k in titles if k in v):
            _show(fig.add_subplot(grid[row, col]), v[key], titles[key].format(name.replace("_", " ")))
    if pretrained is not None:
        ratio = pretrained.mask_ratio if mask_ratio is None else mask_ratio
        fig.suptitle(f"{Path(pretrained.source).name}: mask ratio {ratio}, "
                     f"patch {pretrained.patch_size}", fontsize=9)
    return _render(fig)


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB array atomically; the format follows the extension."""
    path = Path(path)
    atomic_write_image(path, np.ascontiguousarray(image[:, :, ::-1]))
    return path


# ------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m fsvfm.visualize", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("masking", help="parsing map, CRFR-P masks and (with --checkpoint) reconstructions")
    m.add_argument("--image", required=True, help="a face photo (raw photos are detected and cropped first)")
    m.add_argument("--checkpoint", default=None, help="pre-training checkpoint-N.pth (adds reconstructions)")
    m.add_argument("--region", default="all", choices=(*REGION_NAMES, "all"),
                   help="covered facial region, or all (one row per region)")
    m.add_argument("--out", required=True, help=f"output figure ({', '.join(FIGURE_FORMATS)})")
    m.add_argument("--backend", default="auto", choices=BACKENDS, help="face parser (as face_parse.py)")
    m.add_argument("--no_crop", action="store_true", help="the image is already a face crop")
    m.add_argument("--skip_crop_check", action="store_true",
                   help="with --no_crop: use the whole image even when it does not look like a face crop")
    m.add_argument("--mask_ratio", default=None, type=float, help="default: the checkpoint's, else 0.75")
    m.add_argument("--seed", default=0, type=int, help="seed of the CRFR-P draws")
    m.add_argument("--device", default="cpu")
    m.add_argument("--dpi", default=100, type=int, help="pixels per panel = 2 x dpi")
    return parser


def check_figure_path(out: str) -> None:
    """``UsageError`` unless ``out`` ends with a format of ``FIGURE_FORMATS`` this OpenCV can write
    (GIF needs OpenCV 4.12 or later)."""
    suffix = Path(out).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise UsageError(f"--out {out}: the figure is written as {', '.join(FIGURE_FORMATS)}; "
                         "end the file name with one of them")
    if not cv2.haveImageWriter(f"x{suffix}"):
        raise UsageError(f"--out {out}: this OpenCV ({cv2.__version__}) cannot write {suffix}; "
                         "use .png, or install opencv-python-headless>=4.12")


def _masking(args: argparse.Namespace) -> int:
    check_figure_path(args.out)                                # before the slow work, not after it
    face, parsing_map = prepare_face(args.image, args.backend, crop=not args.no_crop,
                                      check_crop=not args.skip_crop_check)
    pretrained = load_pretrained(args.checkpoint, args.device) if args.checkpoint else None
    figure = masking_figure(face, parsing_map, args.region, pretrained, args.mask_ratio, args.seed, args.dpi)
    out = save_image(args.out, figure)
    print(f"wrote {out} ({figure.shape[1]}x{figure.shape[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 after one line for a user mistake (``util.cli.run_cli``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_cli(_masking, get_args_parser(), argv, return_code=True)


if __name__ == "__main__":
    raise SystemExit(main())
