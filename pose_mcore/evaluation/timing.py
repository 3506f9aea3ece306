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


def _once(fn: Callable[[], object], cuda: bool) -> float:
    """Milliseconds of one call of ``fn``."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def timed(fn: Callable[[], object], cuda: bool, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after one warm-up."""
    return timed_side_by_side({"fn": fn}, cuda, reps)["fn"]


def timed_side_by_side(fns: dict[str, Callable[[], object]], cuda: bool, reps: int,
                       peaks: dict[str, float] | None = None) -> dict[str, float]:
    """Median milliseconds of each function, their runs interleaved (a, b, a, b, ...) after one warm-up
    each, so that a machine's drift (other load, clocks) falls on all of them alike. ``peaks``, when given,
    receives each function's largest :class:`PeakMemory` over the timed runs (MiB)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if peaks is None:
                times[name].append(_once(fn, cuda))
                continue
            with PeakMemory(cuda) as mem:
                times[name].append(_once(fn, cuda))
            peaks[name] = max(peaks.get(name, 0.0), mem.peak_mb)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_activation_bytes(model: torch.nn.Module, inputs: dict[str, torch.Tensor], amp_dtype: torch.dtype | None,
                           token_counts: tuple[int, ...] = ()) -> int:
    """Bytes of the distinct tensors a forward keeps for backward, parameters excluded: the activation memory
    of a training step, counted exactly and the same on any device (``amp_dtype``: autocast's dtype, or None
    for the weights' own). With ``token_counts``, only tensors with one of those sizes in their shape count
    (the per-token activations that grow with the video)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen and (not token_counts or set(t.shape) & set(token_counts)):
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    device = next(model.parameters()).device.type
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(device, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(**inputs).sample
    del out
    return sum(seen.values())
