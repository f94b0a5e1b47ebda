"""Run jobs in-process or on a worker pool, with a progress bar, a summary and a failures list.

Each pool worker builds its models once (pool initializer + lazy properties), not per frame and
not per video; results of every task are collected, so worker errors are counted, never lost.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from fsvfm.preprocess.jobs import STATUSES, Job, Options, Outcome, Worker
from fsvfm.preprocess.parse_facer import facer_available, missing_weights_message
from fsvfm.preprocess.parsing import resolve_backend
from fsvfm.util.fileio import atomic_write_text

logger = logging.getLogger(__name__)

_WORKER: Worker | None = None
PARSE_KINDS = ("parse", "crop_parse")


@dataclass
class Summary:
    """Counts of items (images, frames, files) per status, and every failed item."""
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def merge(self, other: Outcome | Summary) -> None:
        self.counts.update(other.counts)
        self.failures.extend(other.failures)

    def exclude(self, item: str, reason: str) -> None:
        """An input left out at planning time (e.g. a video in no split file)."""
        self.counts["excluded"] += 1
        self.failures.append(("excluded", item, reason))

    def total(self) -> int:
        """Items seen, whatever their status (0: the run found nothing to do)."""
        return int(sum(self.counts.values()))

    def error_reasons(self) -> Counter:
        """How many items failed with each distinct ``error`` reason (e.g. a backend that cannot load)."""
        return Counter(reason for status, _, reason in self.failures if status == "error")

    def as_dict(self) -> dict[str, int]:
        return {k: int(self.counts.get(k, 0)) for k in (*STATUSES, "excluded")}

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


def _init_worker(opts: Options) -> None:
    global _WORKER
    if opts.backend == "facer":
        import torch
        torch.set_num_threads(1)
    _WORKER = Worker(opts)


def _run_one(job: Job) -> Outcome:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(job)


def check_backend(opts: Options) -> str:
    """The parsing backend that will run; ``FileNotFoundError`` with FACER's set-up instructions when
    ``facer`` is asked for and its package or weights are missing (once, not one failure per job)."""
    backend = resolve_backend(opts.backend, opts.facer_model_dir)
    if backend == "facer" and not facer_available(opts.facer_model_dir):
        raise FileNotFoundError(missing_weights_message(opts.facer_model_dir))
    return backend


def prepare_options(opts: Options, jobs: Iterable[Job]) -> Options:
    """Resolve ``backend='auto'`` once, in the main process (``check_backend``), and log which runs."""
    if not any(j.kind in PARSE_KINDS for j in jobs):
        return opts
    backend = check_backend(opts)
    logger.info("face parsing backend: %s%s", backend,
                "" if opts.backend != "auto" else " (auto)")
    return replace(opts, backend=backend)


def run_jobs(jobs: list[Job], opts: Options, workers: int = 1, desc: str = "preprocess",
             summary: Summary | None = None) -> Summary:
    """Run ``jobs`` and add their outcomes to ``summary`` (a new one if None)."""
    summary = summary if summary is not None else Summary()
    if not jobs:
        return summary
    opts = prepare_options(opts, jobs)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        worker = Worker(opts)
        for job in tqdm(jobs, desc=desc, unit="job", dynamic_ncols=True):
            summary.merge(worker.run(job))
        return summary
    # fork is fast and shares the read-only state; torch (facer) needs a fresh interpreter.
    ctx = mp.get_context("spawn" if opts.backend == "facer" and any(j.kind in PARSE_KINDS for j in jobs)
                         else "fork")
    chunk = max(1, min(16, len(jobs) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        for outcome in tqdm(pool.imap_unordered(_run_one, jobs, chunksize=chunk), total=len(jobs),
                            desc=desc, unit="job", dynamic_ncols=True):
            summary.merge(outcome)
    return summary


Stage = tuple[str, Callable[[], list[Job]]]


def run_stages(stages: list[Stage], opts: Options, workers: int = 1, log_dir: str | Path | None = None,
               run_name: str = "preprocess", summary: Summary | None = None) -> Summary:
    """Run stages in order; each stage's jobs are listed only when it starts (a copy stage sees the
    files the previous extraction stage wrote). Copy-only stages run in-process."""
    summary = summary if summary is not None else Summary()
    for name, make_jobs in stages:
        jobs = make_jobs()
        logger.info("%s: %d jobs", name, len(jobs))
        only_copies = all(j.kind == "copy" for j in jobs)
        part = run_jobs(jobs, opts, 1 if only_copies else workers, desc=name)
        summary.merge(part)
        if len(stages) > 1:
            logger.info("%s: %s", name, part)
    logger.info("summary: %s", summary)
    for reason, n in summary.error_reasons().most_common(3):
        logger.error("%d item(s) failed with: %s", n, reason)
    if log_dir is not None:
        path = summary.write(log_dir, run_name)
        logger.info("failures list (%d): %s", len(summary.failures), path)
    return summary
