"""The start of a program's run, the same for every ``main_*.py``: output folder, distributed init, logging,
argument dump, stale temp files of a killed save removed; then the run, with the process group destroyed
afterwards (also on error)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsvfm.util import dist
from fsvfm.util.args import default_output_dir
from fsvfm.util.checkpoint import remove_stale_temp_files
from fsvfm.util.log import setup_logging

logger = logging.getLogger(__name__)


def start_run(args: argparse.Namespace, kind: str | None, run: Callable[..., Any], *run_args: Any,
              title: str = "arguments") -> Any:
    """``run(args, *run_args)`` after the start-up. ``kind`` names the default output folder
    (``checkpoint/$USER/experiments_{kind}/...``); None: ``args.output_dir`` is already set."""
    if kind is not None:
        default_output_dir(args, kind)
    dist.init_distributed_mode(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    setup_logging(args.output_dir, dist.get_rank())
    logger.info("processes: %d (backend %s), device %s; job dir %s", dist.get_world_size(),
                getattr(args, "dist_backend", "none"), args.device, Path.cwd())
    logger.info("%s:\n%s", title, dump_args(args))
    if dist.is_main_process():  # before any save of this run
        remove_stale_temp_files(args.output_dir)
    return dist.run_then_cleanup(run, args, *run_args)


def dump_args(args: argparse.Namespace) -> str:
    """One ``  name: value`` line per argument, sorted by name."""
    return "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items()))
