"""``--shard K/N``: a disjoint, deterministic part of a preprocessing run, and merging the parts' summaries.

A job belongs to shard ``crc32(key) % N + 1``. The key of a video job is its output folder and video
name, and the key of any job whose input is a saved frame (``{video}_frame_{i}``) is that frame's folder
and video name, so a later stage that copies or parses the frames of a video runs in the shard that
extracted them. Other jobs are keyed by input, name and outputs. The split depends only on the jobs
themselves (not on listing order or on other inputs), so every shard lists the same work and keeps its part.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

from fsvfm.preprocess.jobs import Job, Summary
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.naming import FRAME_SEPARATOR, video_name_from_path

VIDEO_KINDS = ("crop_video", "fas_video")


def parse_shard(text: str) -> tuple[int, int]:
    """``'K/N'`` -> ``(K, N)`` with ``1 <= K <= N``; ``UsageError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"--shard {text}: give K/N with 1 <= K <= N (e.g. --shard 1/4 ... --shard 4/4)")
    return int(m.group(1)), int(m.group(2))


def shard_key(job: Job) -> str:
    if job.kind in VIDEO_KINDS:
        return f"video\0{Path(job.dst[0])}\0{job.name}"
    src = Path(job.src)
    if FRAME_SEPARATOR in src.stem:
        return f"video\0{src.parent}\0{video_name_from_path(src)}"  # the video rule of the metrics
    return "\0".join((job.kind, job.src, job.name, *job.dst))


def shard_of(job: Job, n: int) -> int:
    """The shard (1..n) that runs ``job``."""
    return zlib.crc32(shard_key(job).encode("utf-8")) % n + 1


def shard_jobs(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """The jobs of shard ``(K, N)``, in their order; all of them when ``shard`` is None."""
    if shard is None:
        return jobs
    k, n = shard
    return [j for j in jobs if shard_of(j, n) == k]


def shard_run_name(run_name: str, shard: tuple[int, int] | None) -> str:
    return run_name if shard is None else f"{run_name}_shard{shard[0]}of{shard[1]}"


def read_summary(log_dir: str | Path, run_name: str) -> Summary:
    """A summary written by ``Summary.write``: counts from the JSON, failures from the list."""
    log_dir = Path(log_dir)
    out = Summary()
    counts = json.loads((log_dir / f"{run_name}_summary.json").read_text(encoding="utf-8"))
    out.counts.update({k: int(v) for k, v in counts.items() if v})
    failures = log_dir / f"{run_name}_failures.txt"
    if failures.is_file():
        for line in failures.read_text(encoding="utf-8").splitlines():
            if line:
                status, item, reason = (line.split("\t", 2) + ["", ""])[:3]
                out.failures.append((status, item, reason))
    return out


def merge_shards(log_dir: str | Path, run_name: str) -> tuple[Summary, int]:
    """Merge ``{run_name}_shard{K}of{N}`` summaries of ``log_dir`` into ``{run_name}_summary.json`` and
    ``{run_name}_failures.txt``; returns the merged summary and N. Every shard must be there, all with
    the same N. Inputs left out at planning time are listed by every shard and are counted once."""
    log_dir = Path(log_dir)
    found: dict[int, set[int]] = {}
    for p in log_dir.glob(f"{run_name}_shard*of*_summary.json"):
        m = re.fullmatch(re.escape(run_name) + r"_shard(\d+)of(\d+)_summary\.json", p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise DataError(f"{log_dir}: no {run_name}_shard<K>of<N>_summary.json to merge "
                        "(run the shards first, with the same --log_dir)")
    if len(found) > 1:
        raise DataError(f"{log_dir}: shard summaries of {run_name} with different N ({sorted(found)}); "
                        "remove the stale ones")
    ((n, ks),) = found.items()
    missing = sorted(set(range(1, n + 1)) - ks)
    if missing:
        raise DataError(f"{log_dir}: shard(s) {', '.join(f'{k}/{n}' for k in missing)} of {run_name} "
                        "have no summary yet (run them, then merge again)")
    merged, excluded = Summary(), {}
    for k in range(1, n + 1):
        part = read_summary(log_dir, shard_run_name(run_name, (k, n)))
        for f in part.failures:
            if f[0] == "excluded":
                excluded.setdefault(f[1], f)
        part.counts.pop("excluded", None)
        merged.counts.update(part.counts)
        merged.failures.extend(f for f in part.failures if f[0] != "excluded")
    for f in excluded.values():
        merged.add(*f)
    merged.write(log_dir, run_name)
    return merged, n
