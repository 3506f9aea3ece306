"""Start the parallel runtime from torchrun's environment: process groups, megatron-core's
``parallel_state`` and reproducible seeds.

NCCL is used with CUDA, gloo without (then :mod:`pose_mcore.parallel.cpu_compat` is applied).
Outside torchrun a single-rank group on a free local port is created, so the same model code runs
in a plain ``python`` process at TP=1.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from pose_mcore.parallel.cpu_compat import apply_cpu_compat


@dataclass(frozen=True)
class ParallelInfo:
    """Where this rank sits: world, tensor-parallel and data-parallel coordinates."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    cp_size: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group(timeout_s: int) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                                world_size=1, timeout=timeout)


def initialize_parallel(tensor_model_parallel_size: int = 1, context_parallel_size: int = 1,
                        seed: int = 1234, timeout_s: int = 600) -> ParallelInfo:
    """Initialise torch.distributed (if needed) and megatron-core's parallel state, then seed.

    Data parallelism takes what is left of the world: ``dp = world / (tp * cp)``. Calling again
    with other sizes re-creates the model-parallel groups.
    """
    apply_cpu_compat()
    if not dist.is_initialized():
        _init_process_group(timeout_s)
    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * context_parallel_size
    if tensor_model_parallel_size < 1 or context_parallel_size < 1 or world % model_parallel:
        raise ValueError(
            f"world size {world} must be divisible by tensor_model_parallel_size="
            f"{tensor_model_parallel_size} x context_parallel_size={context_parallel_size}")
    if parallel_state.model_parallel_is_initialized():
        same = (parallel_state.get_tensor_model_parallel_world_size() == tensor_model_parallel_size
                and parallel_state.get_context_parallel_world_size() == context_parallel_size)
        if not same:
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_model_parallel_size,
                                                 context_parallel_size=context_parallel_size)
    seed_everything(seed)
    return parallel_info()


def run_device() -> torch.device:
    """The device this process computes on: its CUDA device (``LOCAL_RANK`` under torchrun), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def parallel_info() -> ParallelInfo:
    """This rank's coordinates (requires :func:`initialize_parallel`)."""
    device = run_device()
    return ParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        cp_size=parallel_state.get_context_parallel_world_size(),
        device=device,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch identically on every rank, and megatron-core's RNG tracker
    (whose tensor-parallel state differs per TP rank, as in Megatron-LM)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def deterministic_mode() -> None:
    """Make CUDA runs bit-reproducible: deterministic algorithms (cuBLAS workspace included) and only the
    math attention backend, since the fused ones accumulate gradients with atomics. Call before CUDA work.
    Without CUDA it changes nothing (CPU runs are deterministic as they are)."""
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)


def destroy_parallel() -> None:
    """Tear down megatron-core's groups and the default process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
