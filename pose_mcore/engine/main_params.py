"""The fp32 tensors the optimiser updates ("main parameters", in megatron-core's words), laid over the
buffers of megatron-core's DDP.

Without the distributed optimizer every rank updates every trained parameter. With it, rank ``r`` of the
data-parallel group updates only the ``r``-th shard of each gradient bucket (the part DDP's
reduce-scatter left reduced on it): its Adam states and main weights are ``1/dp`` of the role's, and
DDP's parameter all-gather brings the other shards back after the step. Adam is element-wise, so a
shard's update equals the same elements of the unsharded update.

Main weights are views of the model's own weights when those are fp32 (no copy) and fp32 copies when
they are not (bf16 weights train through fp32 main weights, as megatron-core does). The copies belong
to the role, kept with its DDP wrapper: a later optimiser of the same role (Phase II's generator after
Phase I's) continues from them, not from their bf16 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel


@dataclass
class MainParam:
    """One trained parameter's slice on this rank."""

    main: torch.Tensor
    """fp32 weights Adam updates; its ``.grad`` is ``grad``."""
    model: torch.Tensor
    """The model weights (a flat slice of the parameter) that ``main`` is copied to after a step."""
    tensor_parallel: bool
    """A slice of a tensor-parallel weight: its squares are summed over the TP ranks in the norm."""
    param: torch.Tensor
    """The parameter (this rank's TP slice) it is part of."""
    name: str
    """``<index of the role in the optimiser>.<parameter name>``: the same in every layout."""
    span: tuple[int, int]
    """The range of the flattened parameter it covers (all of it without the distributed optimizer)."""

    @property
    def grad(self) -> torch.Tensor:
        return self.main.grad


def main_params(ddps: Sequence[DistributedDataParallel], distributed: bool) -> list[MainParam]:
    """This rank's main parameters for the roles wrapped in ``ddps`` (all of them, or its shard of each
    bucket with the distributed optimizer)."""
    out = []
    for index, ddp in enumerate(ddps):
        names = {p: n for n, p in ddp.module.named_parameters()}
        kept: dict[tuple[int, int, int], torch.Tensor] = ddp.__dict__.setdefault("_pose_main_weights", {})
        group = ddp.dp_cp_group
        rank, size = (group.rank(), group.size()) if distributed else (0, 1)
        for buffer in ddp.buffers:
            for bucket in buffer.buckets:
                shard = bucket.grad_data.numel() // size
                lo, hi = rank * shard, (rank + 1) * shard
                for param in bucket.params_list:
                    start, end, _ = buffer.param_index_map[param]  # in the buffer (padded as DDP laid it out)
                    start, end = start - bucket.offset, end - bucket.offset
                    a, b = max(start, lo) - start, min(end, hi) - start
                    if a >= b:
                        continue
                    model = param.detach().view(-1)[a:b]
                    if model.dtype == torch.float32:
                        main = model
                    else:
                        main = kept.setdefault((id(param), a, b), model.float())
                    main.grad = param.main_grad.view(-1)[a:b]
                    out.append(MainParam(main, model, bool(getattr(param, "tensor_model_parallel", False)), param,
                                         f"{index}.{names[param]}", (a, b)))
    return out
