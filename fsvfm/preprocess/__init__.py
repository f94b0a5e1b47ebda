"""Face preprocessing toolkit: dlib detection and crops, frame sampling, face parsing, workers.

``prepare_pretrain_dataset`` turns a folder of face photos into a pre-training data set
(``root/images/<stem>.png`` + ``root/parsing_maps/<stem>.npy``).
"""
from __future__ import annotations

from pathlib import Path

from fsvfm.preprocess.jobs import Options
from fsvfm.preprocess.layouts import parse_jobs
from fsvfm.preprocess.runner import Summary, run_stages

__all__ = ["Options", "Summary", "prepare_pretrain_dataset"]


def prepare_pretrain_dataset(src_dir: str | Path, dst_dir: str | Path, backend: str = "auto", workers: int = 1,
                           face_select: str = "first", save_vis: bool = False,
                           log_dir: str | Path | None = None) -> Summary:
    """Detect and crop the face of every photo under ``src_dir`` (recursively), parse it and write
    the pre-training data set to ``dst_dir``; the failures list goes to ``log_dir`` (default
    ``dst_dir``). Photos already done are skipped, so calling it again resumes."""
    opts = Options(backend=backend, face_select=face_select, save_vis=save_vis)
    stages = [("crop+parse", lambda: parse_jobs([src_dir], dst_dir, crop=True))]
    return run_stages(stages, opts, workers, log_dir or dst_dir, "prepare_pretrain_dataset")
