"""Metric meters: windowed/global averages of scalar series and a progress-logging iterator."""
from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from fsvfm.util import dist

logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0  # log_every also logs when this long has passed since its last line (a slow CPU epoch)
clock = time.monotonic  # the interval's clock; tests put a fake one here


class SmoothedValue:
    """Windowed median/average plus global average of a scalar series."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})") -> None:
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum ``count`` and ``total`` over ranks (the window stays local)."""
        if dist.get_world_size() == 1:
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=_collective_device())
        dist.all_reduce_sum(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self) -> float:
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


def _collective_device() -> torch.device:
    import torch.distributed as tdist
    backend = tdist.get_backend() if dist.is_dist_avail_and_initialized() else "gloo"
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class MetricLogger:
    """Named ``SmoothedValue`` meters with a progress-logging iterator."""

    def __init__(self, delimiter: str = "  ") -> None:
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.log_due = False  # log_every logs after the step it is yielding now (StepLog reads it)

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __getattr__(self, attr: str) -> SmoothedValue:
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(attr)

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def global_averages(self) -> dict[str, float]:
        return {k: m.global_avg for k, m in self.meters.items()}

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "") -> Iterator:
        """Yield from ``iterable``, logging progress, ETA and meters every ``print_freq`` steps, after the
        last one, and after any step that starts ``LOG_INTERVAL_S`` or more after the previous line."""
        n = len(iterable)  # type: ignore[arg-type]
        width = len(str(n))
        start = end = time.time()
        last_line = clock()
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            self.log_due = i % print_freq == 0 or i == n - 1 or clock() - last_line >= LOG_INTERVAL_S
            yield obj
            iter_time.update(time.time() - end)
            if self.log_due:
                last_line = clock()
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n - i - 1)))
                mem = ""
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    mem = f"  max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}MB"
                logger.info("%s [%*d/%d]  eta: %s  %s  time: %s  data: %s%s", header, width, i, n, eta,
                            self, iter_time, data_time, mem)
            end = time.time()
        total = time.time() - start
        logger.info("%s Total time: %s (%.4f s / it)", header, datetime.timedelta(seconds=int(total)),
                    total / max(n, 1))
