"""Distributed set-up in one place: rank/world size from torchrun / torch.distributed.launch /
SLURM / OpenMPI environments, NCCL on CUDA, gloo on CPU, DDP wrap exactly once.

Faults: collectives time out after ``FSVFM_DIST_TIMEOUT`` minutes (default 30; ``args.dist_timeout``
wins when a program has that flag), so a hung rank ends the run instead of blocking it for good;
each worker exits when its launcher dies (a watchdog thread, ``FSVFM_EXIT_WITH_LAUNCHER=0`` turns
it off). A rank that dies is handled by the launcher: torchrun stops the other ranks.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import threading
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from fsvfm.util.errors import UsageError

logger = logging.getLogger(__name__)

DIST_TIMEOUT_ENV = "FSVFM_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT_MINUTES = 30.0
EXIT_WITH_LAUNCHER_ENV = "FSVFM_EXIT_WITH_LAUNCHER"
LAUNCHER_GONE_EXIT_CODE = 1
_watchdog_pid: int | None = None     # the process whose watchdog runs (a forked child needs its own)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def resolve_device(name: str | None) -> torch.device:
    """``None``/``'auto'`` -> CUDA when present, else CPU; a CUDA request without CUDA is an error."""
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"--device {name}: not a device name; use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is usable here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def dist_timeout(args: argparse.Namespace | None = None) -> datetime.timedelta:
    """Collective timeout: ``args.dist_timeout`` (minutes) when set, else ``$FSVFM_DIST_TIMEOUT``
    (minutes), else 30 minutes. A value that is not a positive number is an error naming its source."""
    value, source = getattr(args, "dist_timeout", None), "--dist_timeout"
    if value is None:
        value, source = os.environ.get(DIST_TIMEOUT_ENV) or None, DIST_TIMEOUT_ENV
    if value is None:
        return datetime.timedelta(minutes=DEFAULT_DIST_TIMEOUT_MINUTES)
    try:
        minutes = float(value)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"{source}={value!r}: the collective timeout must be a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


def exit_with_launcher(poll_seconds: float = 0.5) -> bool:
    """End this process when its parent (torchrun, ``torch.distributed.launch``, srun) dies.

    A daemon thread polls the parent pid: a killed launcher leaves workers that would otherwise go on
    training, unseen, holding the GPUs. Polling is used rather than ``PR_SET_PDEATHSIG``, which fires
    when the parent *thread* that started the worker ends and exists on Linux only. Started once per
    process; returns whether it runs (``FSVFM_EXIT_WITH_LAUNCHER=0`` disables it).
    """
    global _watchdog_pid
    if os.environ.get(EXIT_WITH_LAUNCHER_ENV, "1") == "0":
        return False
    if _watchdog_pid == os.getpid():
        return True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        logger.error("the launcher (pid %d) has exited; this worker stops too", parent)
        os._exit(LAUNCHER_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="fsvfm-launcher-watchdog", daemon=True).start()
    _watchdog_pid = os.getpid()
    return True


def _set_ranks(args: argparse.Namespace) -> None:
    """``args.rank, world_size, gpu, distributed`` from the launcher's environment."""
    env = os.environ
    if getattr(args, "dist_on_itp", False):
        args.rank = int(env["OMPI_COMM_WORLD_RANK"])
        args.world_size = int(env["OMPI_COMM_WORLD_SIZE"])
        args.gpu = int(env["OMPI_COMM_WORLD_LOCAL_RANK"])
        args.dist_url = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        env.update(LOCAL_RANK=str(args.gpu), RANK=str(args.rank), WORLD_SIZE=str(args.world_size))
    elif "RANK" in env and "WORLD_SIZE" in env:
        args.rank, args.world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        args.gpu = int(env.get("LOCAL_RANK", getattr(args, "local_rank", 0) or 0))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        args.rank = int(env["SLURM_PROCID"])
        args.world_size = int(env["SLURM_NTASKS"])
        args.gpu = int(env.get("SLURM_LOCALID", 0))
    else:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.distributed = True


def init_distributed_mode(args: argparse.Namespace) -> None:
    """Set ``args.distributed, rank, world_size, gpu, dist_backend`` and initialise the process group.

    Also resolves ``args.device`` (per-process CUDA device when distributed on GPUs). A
    ``--world_size`` that differs from the launcher's process count is an error.
    """
    requested = getattr(args, "world_size", None)
    _set_ranks(args)
    if requested is not None and requested != args.world_size:
        raise UsageError(f"--world_size {requested} but {args.world_size} process(es) were started; "
                         "drop --world_size or launch that many processes")
    if not args.distributed:
        args.device = str(resolve_device(getattr(args, "device", None)))
        return
    exit_with_launcher()
    device = resolve_device(getattr(args, "device", None))
    if device.type == "cuda":
        torch.cuda.set_device(args.gpu)
        device = torch.device("cuda", args.gpu)
    args.device = str(device)
    args.dist_backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=args.dist_backend, init_method=getattr(args, "dist_url", "env://"),
                            world_size=args.world_size, rank=args.rank,
                            timeout=dist_timeout(args))
    dist.barrier()
    logger.info("distributed init: rank %d/%d, backend %s, device %s", args.rank, args.world_size,
                args.dist_backend, args.device)


def cleanup() -> None:
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def run_then_cleanup(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, then a barrier; the process group is destroyed afterwards, also on error."""
    try:
        result = fn(*args)
        barrier()
        return result
    finally:
        cleanup()


def wrap_model(model: torch.nn.Module, args: argparse.Namespace,
               find_unused_parameters: bool = False, move_inputs: bool = True) -> torch.nn.Module:
    """Wrap in DDP exactly once when distributed; otherwise return the model unchanged.

    ``move_inputs=False``: DDP hands the inputs over where they are (no ``device_ids``; the model sits on
    one device already), so a CPU tensor the model reads on the host is not copied to the device first.
    """
    if not getattr(args, "distributed", False):
        return model
    device_ids = [args.gpu] if str(args.device).startswith("cuda") and move_inputs else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                     find_unused_parameters=find_unused_parameters)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | str = "cpu") -> float:
    """Mean of a scalar over ranks (identity in a single process)."""
    if get_world_size() == 1:
        return float(value)
    t = torch.as_tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / get_world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process); returns ``t``."""
    if get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor along dim 0 over ranks; ranks may hold different lengths."""
    world = get_world_size()
    if world == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    max_len = int(max(s.item() for s in sizes))
    padded = torch.zeros((max_len, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    return torch.cat([c[: int(s.item())] for c, s in zip(chunks, sizes)], dim=0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to all ranks."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
