"""Wall time and peak memory of a phase (method selection/distillation, evaluation).

CPU peak memory is the process's resident set size sampled by a background thread (psutil),
so it includes everything the process already held when the phase began; ``baseline_rss_mb``
is recorded next to it so the phase's own growth can be read off. On CUDA the allocator's
exact peak is used as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch


@dataclass
class Cost:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    baseline_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1),
               "baseline_rss_mb": round(self.baseline_rss_mb, 1)}
        if self.peak_cuda_mb is not None:
            out["peak_cuda_mb"] = round(self.peak_cuda_mb, 1)
        return out


@contextmanager
def measure(device: torch.device | None = None, interval: float = 0.02) -> Iterator[Cost]:
    process = psutil.Process()
    cost = Cost(baseline_rss_mb=process.memory_info().rss / 2**20)
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    thread.start()
    try:
        yield cost
    finally:
        stop.set()
        thread.join()
        cost.seconds = time.perf_counter() - start
        peak[0] = max(peak[0], process.memory_info().rss)
        cost.peak_rss_mb = peak[0] / 2**20
        if cuda:
            cost.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
