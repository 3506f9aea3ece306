"""Data parallelism with megatron-core's ``DistributedDataParallel``: the trained parameters of a role
get one contiguous fp32 gradient buffer (``param.main_grad``), cut into buckets that are reduced over the
data-parallel (x context-parallel) ranks as soon as backward has filled them, overlapped with the rest
of backward; with the distributed optimizer a bucket is reduce-scattered instead, and each rank keeps
only its shard of the reduced gradient.

A role is wrapped once and keeps its wrapper while phases train it (Phase II trains the generator Phase I
trained): wrapping twice would register its gradient hooks twice. A role the next phase does not train is
:func:`release`d: its buffers, main weights and hooks go (Phase I's fake-score LoRA in Phase II: 1.1 GiB per
rank at 14B).
"""

from __future__ import annotations

from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

_ATTR = "_pose_ddp"


def data_parallel(module: nn.Module, config: TransformerConfig, distributed_optimizer: bool,
                  overlap_grad_reduce: bool = True, bucket_size: int | None = None) -> DistributedDataParallel:
    """``module``'s megatron-core DDP wrapper (created on the first call; later calls must ask for the same
    settings). Only parameters that require gradients are bucketed, so a frozen base with a LoRA gets
    buffers for the LoRA only."""
    if parallel_state.get_data_parallel_world_size(with_context_parallel=True) == 1:
        overlap_grad_reduce = False  # nothing to reduce: no hooks that would start a reduction
    if getattr(module, "sparse_gradients", False):
        # megatron starts an overlapped bucket's reduction once as many of its gradients as in the first step
        # are ready: with experts that a step may leave unused, it would start early or never.
        overlap_grad_reduce = False
    ddp = module.__dict__.get(_ATTR)
    if ddp is not None:
        same = (ddp.ddp_config.use_distributed_optimizer == distributed_optimizer
                and ddp.ddp_config.overlap_grad_reduce == overlap_grad_reduce)
        if not same:
            raise ValueError(f"{type(module).__name__} is already wrapped for data parallelism with other settings")
        return ddp
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
                                               use_distributed_optimizer=distributed_optimizer,
                                               bucket_size=bucket_size)
    ddp = DistributedDataParallel(config, ddp_config, module)
    module.__dict__[_ATTR] = ddp  # a plain attribute, not a submodule: the role's state_dict stays its own
    return ddp


def release(module: nn.Module) -> None:
    """Drop ``module``'s DDP wrapper and all it holds: the fp32 gradient buffers (and the parameters' ``main_grad``
    views of them), the fp32 main weights kept with it, the gradient hooks on the parameters' accumulators."""
    ddp = module.__dict__.pop(_ATTR, None)
    if ddp is None:
        return
    for p in module.parameters():
        for attr in ("main_grad", "grad_added_to_main_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
    ddp.grad_accs.clear()  # the accumulators carry the hooks, and the hooks the wrapper
