"""Rank-aware logging to the console and ``log_detail.txt`` (never replaces ``sys.stdout``)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fsvfm.util import dist

_FORMAT = "[%(asctime)s] %(message)s"
_DATEFMT = "%H:%M:%S"


def setup_logging(output_dir: str | os.PathLike | None = None, rank: int = 0,
                  filename: str = "log_detail.txt", level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger once per process.

    Rank 0 logs INFO to stderr and, when ``output_dir`` is given, appends to
    ``output_dir/filename``. Other ranks log only warnings and errors to stderr, so a failure on
    any rank stays visible. Calling it again replaces the handlers it installed earlier.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_fsvfm", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(_FORMAT, _DATEFMT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console._fsvfm = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if output_dir is not None and rank == 0:
        path = Path(output_dir) / filename
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = TolerantFileHandler(path, mode="a", encoding="utf-8")
        except OSError as e:
            _warn_once(path, e)
        else:
            fh.setFormatter(fmt)
            fh._fsvfm = True  # type: ignore[attr-defined]
            root.addHandler(fh)
    return root


def _warn_once(path: Path, error: BaseException) -> None:
    print(f"warning: cannot write the log file {path} ({error.strerror if isinstance(error, OSError) else error}); "
          "logging to the console only", file=sys.stderr, flush=True)


class TolerantFileHandler(logging.FileHandler):
    """A log file that, when it cannot be written (full disk, read-only folder), says so once on stderr and
    stops, instead of logging's traceback for every record; the run goes on (a save that fails for the same
    reason is reported where it happens)."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            _warn_once(Path(self.baseFilename), sys.exc_info()[1])


def summary_writer(args: argparse.Namespace, subdir: str = "", purge_step: int | None = None):
    """TensorBoard ``SummaryWriter`` on ``args.log_dir`` (default ``--output_dir``; ``/subdir`` when given,
    e.g. one folder per FAS run) on rank 0, else None. ``purge_step``: a resumed run's first step (TensorBoard
    drops the older events from there on)."""
    if not dist.is_main_process():
        return None
    from torch.utils.tensorboard import SummaryWriter
    log_dir = Path(getattr(args, "log_dir", "") or args.output_dir)
    return SummaryWriter(log_dir=str(log_dir / subdir if subdir else log_dir), purge_step=purge_step)
