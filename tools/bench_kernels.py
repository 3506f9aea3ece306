#!/usr/bin/env python
"""Benchmark the pose_kernels ops against their torch references (and torch SDPA for attention).

Prints, side by side in one run and per shape: time of the forward and of forward + backward, the
achieved memory bandwidth (minimum bytes an op must move / time) and its share of the device's peak,
and the peak memory each path allocates. Ratios are measured in the same run, never assumed.

Shapes are Wan2.1-14B's: 40 heads of 128 channels; 480p (21 x 60 x 104 latents -> 32,760 tokens)
and 720p (21 x 90 x 160 -> 75,600 tokens); 16 to 64 logit queries; ST-R1 on the 16-channel latents
and, for the feature variant, on 5120-wide hidden states. On a machine without CUDA only the torch
paths run (the Triton timings need a GPU) and memory is the sampled rise of the process's RSS.

    python tools/bench_kernels.py                 # the full sweep
    python tools/bench_kernels.py --quick         # tiny shapes: checks that everything runs
    python tools/bench_kernels.py --peak-gbps 3350  # override the peak bandwidth used for the % column
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from pose_kernels import logit_query_attention, st_r1_penalty, st_r1_perturb

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported (through pose_mcore.evaluation): it warns at import

from pose_mcore.evaluation.timing import PeakMemory, timed  # noqa: E402

# Peak HBM bandwidth (GB/s) of common training GPUs, by a substring of torch's device name.
PEAK_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864}

ATTENTION_SHAPES = [  # (label, B, H, N, S, D)
    ("480p N=16", 1, 40, 16, 32760, 128),
    ("480p N=64", 1, 40, 64, 32760, 128),
    ("720p N=16", 1, 40, 16, 75600, 128),
    ("720p N=64", 1, 40, 64, 75600, 128),
]
LATENT_SHAPES = [("480p", (1, 16, 21, 60, 104)), ("720p", (1, 16, 21, 90, 160)), ("720p B=2", (2, 16, 21, 90, 160))]
FEATURE_SHAPES = [("480p features", (1, 32760, 5120)), ("720p features", (1, 75600, 5120))]
QUICK_ATTENTION = [("quick", 2, 4, 7, 1000, 64)]
QUICK_LATENTS = [("quick", (2, 4, 5, 16, 24))]
QUICK_FEATURES = [("quick features", (2, 300, 64))]


@dataclass
class Row:
    op: str
    shape: str
    path: str
    fwd_ms: float
    fwd_bwd_ms: float | None
    gbytes: float
    peak_mb: float
    error: str | None = None
    """Why this case failed (its row says so and the sweep goes on)."""


class Table:
    """Prints each row the moment it is measured (a long sweep shows progress, and a crash keeps what was
    measured) and keeps the rows for the ratios at the end."""

    HEADER = f"{'op':<22} {'shape':<38} {'path':<10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd GB/s':>9} " \
             f"{'% peak':>7} {'peak MB':>9}"

    def __init__(self, peak: float | None) -> None:
        self.peak = peak
        self.rows: list[Row] = []
        print(self.HEADER)
        print("-" * len(self.HEADER), flush=True)

    def add(self, r: Row) -> None:
        self.rows.append(r)
        if r.error is not None:
            print(f"{r.op:<22} {r.shape:<38} {r.path:<10} FAILED: {r.error}", flush=True)
            return
        gbps = r.gbytes / (r.fwd_ms / 1e3)
        pct = f"{100 * gbps / self.peak:6.1f}%" if self.peak else "    n/a"
        fb = f"{r.fwd_bwd_ms:11.2f}" if r.fwd_bwd_ms is not None else f"{'-':>11}"
        print(f"{r.op:<22} {r.shape:<38} {r.path:<10} {r.fwd_ms:10.2f} {fb} {gbps:9.1f} {pct} {r.peak_mb:9.1f}",
              flush=True)


def measure(op: str, shape: str, path: str, fwd: Callable[[], object], fwd_bwd: Callable[[], object] | None,
            gbytes: float, cuda: bool, reps: int) -> Row:
    """Time and peak memory of one case; an exception becomes the row's ``error``."""
    try:
        with PeakMemory(cuda) as mem:
            (fwd_bwd or fwd)()
        fwd_ms = timed(fwd, cuda, reps)
        fwd_bwd_ms = timed(fwd_bwd, cuda, reps) if fwd_bwd is not None else None
    except Exception as e:  # noqa: BLE001 - a failing case is reported in its row, the sweep goes on
        if cuda:
            torch.cuda.empty_cache()
        return Row(op, shape, path, float("nan"), None, gbytes, float("nan"), f"{type(e).__name__}: {e}"[:200])
    return Row(op, shape, path, fwd_ms, fwd_bwd_ms, gbytes, mem.peak_mb)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, None]:
    return F.scaled_dot_product_attention(q, k, v), None


def attention_calls(fn, q, k, v, grad) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward without autograd, forward + backward) closures of one attention path."""
    def fwd():
        with torch.no_grad():
            return fn(q, k, v)

    def fwd_bwd():
        torch.autograd.grad(fn(q, k, v)[0], (q, k, v), grad)

    return fwd, fwd_bwd


def penalty_calls(backend, a, c, ms) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward without autograd, forward + backward) closures of st_r1_penalty."""
    def fwd():
        with torch.no_grad():
            return st_r1_penalty(a, c, ms, backend=backend)

    def fwd_bwd():
        torch.autograd.grad(st_r1_penalty(a, c, ms, backend=backend).sum(), a)

    return fwd, fwd_bwd


def bench_attention(table: Table, shapes, device, dtype, paths, reps) -> None:
    cuda = device.type == "cuda"
    for label, b, h, n, s, d in shapes:
        q = torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(b, h, s, d, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(b, h, s, d, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, h, n, d, device=device, dtype=dtype)
        # minimum traffic of the forward: read q, k, v, write out
        gbytes = (2 * b * h * s * d + 2 * b * h * n * d) * q.element_size() / 1e9
        for path, fn in paths.items():
            table.add(measure("logit-query attention", f"{label} ({b}x{h}x{n}x{s}x{d})", path,
                              *attention_calls(fn, q, k, v, grad), gbytes, cuda, reps))
        del q, k, v, grad


def bench_st_r1(table: Table, latents, features, device, dtype, backends, reps) -> None:
    cuda = device.type == "cuda"
    for label, shape in latents:
        x = torch.randn(shape, device=device, dtype=dtype)
        gbytes = 2 * x.numel() * x.element_size() / 1e9  # read x, write x_pert
        for backend in backends:
            table.add(measure("st_r1_perturb", f"{label} {tuple(shape)}", backend,
                              partial(st_r1_perturb, x, 0.05, 0.05, 0, backend=backend), None, gbytes, cuda, reps))
        del x
    for label, shape in features:
        a = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        c = torch.randn(shape, device=device, dtype=dtype)
        ms = torch.rand(shape[0], device=device) + 0.5
        gbytes = 2 * a.numel() * a.element_size() / 1e9  # the forward reads both inputs
        for backend in backends:
            table.add(measure("st_r1_penalty", f"{label} {tuple(shape)}", backend, *penalty_calls(backend, a, c, ms),
                              gbytes, cuda, reps))
        del a, c


def peak_bandwidth(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def print_ratios(rows: list[Row], fast: str, slow: str) -> None:
    by_key = {(r.op, r.shape, r.path): r for r in rows if r.error is None}
    for r in rows:
        other = by_key.get((r.op, r.shape, slow))
        if r.path != fast or other is None or r.error is not None:
            continue
        line = f"{r.op} {r.shape}: {fast} is {other.fwd_ms / r.fwd_ms:.2f}x {slow} (fwd)"
        if r.fwd_bwd_ms and other.fwd_bwd_ms:
            line += f", {other.fwd_bwd_ms / r.fwd_bwd_ms:.2f}x (fwd+bwd)"
        print(line + f"; peak memory {r.peak_mb:.0f} vs {other.peak_mb:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to check that the script runs")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth for the %% column")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="default: bf16 on a GPU, fp32 on the CPU")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if cuda else "fp32")]
    reps = args.reps or (20 if cuda else 3)
    attention, latents, features = ((QUICK_ATTENTION, QUICK_LATENTS, QUICK_FEATURES) if args.quick
                                    else (ATTENTION_SHAPES, LATENT_SHAPES, FEATURE_SHAPES))
    backends = ["triton", "reference"] if cuda else ["reference"]
    paths = {"reference": lambda q, k, v: logit_query_attention(q, k, v, backend="reference"), "sdpa": sdpa}
    if cuda:
        paths = {"triton": lambda q, k, v: logit_query_attention(q, k, v, backend="triton"), **paths}
    peak = peak_bandwidth(device, args.peak_gbps)

    name = (torch.cuda.get_device_name(device) if cuda
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"device: {name}; dtype: {dtype}; reps: {reps}; peak bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown'}")
    if not cuda:
        print("No CUDA device: only the torch paths run here; the Triton kernel timings need a GPU.")
        print("peak MB on the CPU is the sampled rise of the process RSS: memory the allocator reuses is not counted.")
    table = Table(peak)
    bench_attention(table, attention, device, dtype, paths, reps)
    bench_st_r1(table, latents, features, device, dtype, backends, reps)
    print()
    if cuda:
        print_ratios(table.rows, "triton", "reference")
        print_ratios(table.rows, "triton", "sdpa")
    print_ratios(table.rows, "reference", "sdpa")
    failed = [r for r in table.rows if r.error is not None]
    if failed:
        print(f"{len(failed)} case(s) failed: " + "; ".join(f"{r.op} {r.shape} {r.path}" for r in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
