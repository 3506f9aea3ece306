"""Timing and peak-memory measurement shared by the benchmark scripts in ``tools/``: the median of
repeated runs (CUDA events on a GPU, wall clock on the CPU) and the peak memory of a block of work."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable

import torch


class PeakMemory:
    """Peak memory a block allocates, in MiB (``peak_mb``): CUDA's allocator statistics on a GPU, or the
    sampled rise of the process's resident memory on a CPU (memory the allocator reuses is not counted)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.top, self.done = self._rss(), self._rss(), False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done:
            self.top = max(self.top, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.done = True
            self.thread.join()
            self.peak_mb = (max(self.top, self._rss()) - self.base) / 2**20


def timed(fn: Callable[[], object], cuda: bool, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
