"""FACER parsing backend: ``retinaface/mobilenet`` (threshold 0.3) + ``farl/lapa/448``.

The weights are never downloaded from here: they are looked up in ``--facer_model_dir`` or in
FACER's own cache (``torch.hub.get_dir()/checkpoints``), and a missing file gives one message
saying which files to put where.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DETECTOR_NAME, PARSER_NAME, THRESHOLD = "retinaface/mobilenet", "farl/lapa/448", 0.3
FACER_FILES = {
    "detector": ("mobilenet0.25_Final.pth",
                 "https://github.com/elliottzheng/face-detection/releases/download/0.0.1/"
                 "mobilenet0.25_Final.pth"),
    "parser": ("face_parsing.farl.lapa.main_ema_136500_jit191.pt",
               "https://github.com/FacePerceiver/facer/releases/download/models-v1/"
               "face_parsing.farl.lapa.main_ema_136500_jit191.pt"),
}


def facer_cache_dir() -> Path:
    """Where FACER caches its downloads."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints"


def facer_weights(model_dir: str | Path | None = None) -> dict[str, Path] | None:
    """Paths of both weight files, or None when one is missing."""
    root = Path(model_dir) if model_dir else facer_cache_dir()
    paths = {key: root / fname for key, (fname, _) in FACER_FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def facer_available(model_dir: str | Path | None = None) -> bool:
    return importlib.util.find_spec("facer") is not None and facer_weights(model_dir) is not None


def missing_weights_message(model_dir: str | Path | None = None) -> str:
    root = Path(model_dir) if model_dir else facer_cache_dir()
    lines = [f"FACER weights not found in {root}. Download these files and put them there "
             "(or in the folder given by --facer_model_dir):"]
    lines += [f"  {root / fname}   <- {url}" for fname, url in FACER_FILES.values()]
    if importlib.util.find_spec("facer") is None:
        lines.append("and install FACER: pip install pyfacer --no-deps && pip install validators requests")
    return "\n".join(lines)


class FacerParser:
    """Parsing backend ``facer``; models are built once per instance (i.e. once per worker)."""

    name = "facer"

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None):
        paths = facer_weights(model_dir)
        if paths is None or importlib.util.find_spec("facer") is None:
            raise FileNotFoundError(missing_weights_message(model_dir))
        import facer
        import torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector = facer.face_detector(DETECTOR_NAME, device=self.device, threshold=THRESHOLD,
                                            model_path=str(paths["detector"]))
        self.parser = facer.face_parser(PARSER_NAME, device=self.device, model_path=str(paths["parser"]))

    def parse(self, rgb: np.ndarray, rect: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """(H, W) uint8 LaPa map of the first (highest-score) face, None when FACER finds none.

        ``rect`` is ignored: FACER detects on the image it parses, as in the original.
        """
        import torch
        with torch.inference_mode():
            image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].to(self.device)
            faces = self.detector(image)
            if faces["scores"].numel() == 0:
                return None
            faces = {k: faces[k][:1] for k in ("image_ids", "rects", "points", "scores")}
            logits = self.parser(image, faces)["seg"]["logits"]      # (1, 11, H, W)
            labels = logits.softmax(dim=1).argmax(dim=1)[0]
        return labels.cpu().numpy().astype(np.uint8)
