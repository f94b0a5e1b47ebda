"""Run jobs in-process or on a worker pool, with a progress bar, a summary and a failures list.

Each pool worker builds its models once (pool initializer + lazy properties), not per frame and
not per video; results of every task are collected, so worker errors are counted, never lost.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from fsvfm.preprocess.jobs import Job, Options, Summary, Worker
from fsvfm.preprocess.parse_facer import facer_available, missing_weights_message
from fsvfm.preprocess.parsing import resolve_backend

logger = logging.getLogger(__name__)

_WORKER: Worker | None = None
PARSE_KINDS = ("parse", "parse_checked", "crop_parse")


def _init_worker(opts: Options) -> None:
    global _WORKER
    if opts.backend == "facer" or "torch" in sys.modules:   # torch models (FACER, MTCNN): one thread per worker
        import torch
        torch.set_num_threads(1)
    _WORKER = Worker(opts)


def _run_one(job: Job) -> Summary:
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
    with tqdm(total=len(jobs), desc=desc, unit="job", dynamic_ncols=True) as bar:
        for outcome in _pool_outcomes(jobs, opts, workers, ctx):
            summary.merge(outcome)
            bar.update()
    return summary


def _crash_summary(job: Job) -> Summary:
    out = Summary()
    out.add("error", job.src, "the worker process died on this input (crashed or was killed); the others went on")
    return out


def _pool_outcomes(jobs: list[Job], opts: Options, workers: int, ctx) -> Iterator[Summary]:
    """One ``Summary`` per job from a pool of ``workers`` processes. A worker that dies (a segfault in a
    decoder, the OOM killer) breaks the pool; the jobs in flight are then rerun one at a time in a fresh
    pool, so the one that kills its worker is found, recorded as an ``error`` and the others go on."""
    pending = list(reversed(jobs))   # popped from the end, in the given order
    suspects: list[Job] = []         # in flight when a worker died
    while pending or suspects:
        window = 1 if suspects else 2 * workers
        with ProcessPoolExecutor(workers if not suspects else 1, mp_context=ctx, initializer=_init_worker,
                                 initargs=(opts,)) as pool:
            running: dict = {}
            try:
                while pending or suspects or running:
                    while (pending or suspects) and len(running) < window:
                        job = suspects.pop() if suspects else pending.pop()
                        running[pool.submit(_run_one, job)] = job
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcome = future.result()  # BrokenProcessPool when a worker died
                        del running[future]
                        yield outcome
                    if window == 1 and not suspects:
                        break  # the suspects are cleared: back to the full pool
            except BrokenProcessPool:
                lost = [f for f in running if not f.done() or f.exception() is not None]
                yield from (f.result() for f in running if f not in lost)
                if window == 1:  # it ran alone: this job killed its worker
                    yield _crash_summary(running[lost[0]])
                else:
                    suspects = [running[f] for f in reversed(lost)] + suspects
                    logger.warning("a worker process died; rerunning the %d job(s) it may have held one at a "
                                   "time", len(lost))


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
