"""Tensor-parallel-independent state dicts.

pose_mcore's checkpoints hold whole tensors under the model's own parameter names. A TP rank keeps
the slice that megatron-core's attributes describe (``tensor_model_parallel``, ``partition_dim``);
these helpers cut whole tensors into a rank's slices and gather slices back into whole tensors.

A fused parameter may also carry ``partition_groups``: the sizes of the consecutive groups it
concatenates along ``partition_dim`` (e.g. ``(h, h, h, m)`` for HunyuanVideo's fused q, k, v, MLP
input). Each group is split evenly over the ranks and a rank holds its piece of every group, in
order: ``[q_r | k_r | v_r | mlp_r]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def _is_sharded(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def _partition_dim(param: torch.Tensor, name: str) -> int:
    stride = getattr(param, "partition_stride", 1)
    if stride != 1:
        raise NotImplementedError(f"parameter {name!r} uses partition_stride={stride}; only 1 is supported")
    return param.partition_dim


def _groups(param: torch.Tensor, dim: int, tp: int) -> tuple[int, ...]:
    """Whole-tensor sizes of the groups concatenated along ``dim`` (one group unless fused)."""
    return tuple(getattr(param, "partition_groups", None) or (param.shape[dim] * tp,))


def grouped_init(init_method: Callable[[torch.Tensor], None], groups: tuple[int, ...], dim: int
                 ) -> Callable[[torch.Tensor], None]:
    """``init_method`` for a fused weight cut group by group (``partition_groups``): megatron-core's CPU
    initialisation draws the whole weight and keeps the rank's contiguous slice along ``dim``; this draws the
    same numbers and reorders the whole weight so that that slice is ``[group_0 piece r | group_1 piece r | ...]``,
    so one seed gives the same whole weight at any TP size. A weight that is not whole (megatron's
    initialisation of the local slice on a GPU) is left as drawn."""

    def init(weight: torch.Tensor) -> None:
        init_method(weight)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        if tp == 1 or weight.shape[dim] != sum(groups):
            return
        starts = [sum(groups[:i]) for i in range(len(groups))]
        order = [i for r in range(tp) for start, g in zip(starts, groups, strict=True)
                 for i in range(start + r * (g // tp), start + (r + 1) * (g // tp))]
        with torch.no_grad():
            weight.copy_(weight.index_select(dim, torch.tensor(order, device=weight.device)))

    return init


def partition(param: torch.Tensor, name: str = "?") -> tuple[int, tuple[int, ...]] | None:
    """How ``param``'s whole tensor is split over the TP ranks: ``(dim, whole sizes of its groups)``, or None
    for a replicated parameter."""
    if not _is_sharded(param):
        return None
    dim = _partition_dim(param, name)
    return dim, _groups(param, dim, parallel_state.get_tensor_model_parallel_world_size())


def local_ranges(param: torch.Tensor, full_shape: tuple[int, ...], name: str = "?"
                 ) -> tuple[int, list[tuple[int, int]]] | None:
    """Where this TP rank's slice of ``param`` lies in the whole tensor: ``(dim, [(start, end), ...])``
    (several ranges for a fused parameter), or None for a replicated parameter."""
    split = partition(param, name)
    if split is None:
        return None
    dim, groups = split
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if (len(full_shape) != param.dim() or full_shape[dim] != param.shape[dim] * tp or sum(groups) != full_shape[dim]
            or any(g % tp for g in groups)):
        raise ValueError(f"{name}: whole tensor of shape {tuple(full_shape)} does not split into "
                         f"{tp} slices of shape {tuple(param.shape)} along dim {dim} (groups {groups})")
    ranges, start = [], 0
    for g in groups:
        piece = g // tp
        ranges.append((start + rank * piece, start + (rank + 1) * piece))
        start += g
    return dim, ranges


def local_slice(full: torch.Tensor, param: torch.Tensor, name: str = "?") -> torch.Tensor:
    """This TP rank's slice of the whole tensor ``full`` for the (local) parameter ``param``."""
    where = local_ranges(param, tuple(full.shape), name)
    if where is None:
        return full
    dim, ranges = where
    return torch.cat([full.narrow(dim, a, b - a) for a, b in ranges], dim=dim)


def load_full_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy whole (TP-independent) tensors into ``model``'s local slices; names must match exactly."""
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    expected = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"state dict does not fit {type(model).__name__}: missing {missing[:20]}"
                       f"{' ...' if len(missing) > 20 else ''}; unexpected {unexpected[:20]}"
                       f"{' ...' if len(unexpected) > 20 else ''}")
    with torch.no_grad():
        for name in expected:
            target = params[name]
            piece = local_slice(state[name], target, name)
            if piece.shape != target.shape:
                raise ValueError(f"{name}: shape {tuple(state[name].shape)} does not fit the model's "
                                 f"{tuple(target.shape)}")
            target.copy_(piece)


def full_shape(param: torch.Tensor, name: str = "?") -> tuple[int, ...]:
    """The whole tensor's shape of this rank's (local) ``param``."""
    shape = list(param.shape)
    if _is_sharded(param):
        shape[_partition_dim(param, name)] *= parallel_state.get_tensor_model_parallel_world_size()
    return tuple(shape)


def gather_full(param: torch.Tensor, local: torch.Tensor | None = None, name: str = "?") -> torch.Tensor:
    """All-gather the whole tensor from the TP slices of ``local`` (default: ``param`` itself)."""
    local = param.detach() if local is None else local.detach()
    if not _is_sharded(param) or parallel_state.get_tensor_model_parallel_world_size() == 1:
        return local.clone()
    dim = _partition_dim(param, name)
    group = parallel_state.get_tensor_model_parallel_group()
    tp = dist.get_world_size(group)
    pieces = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    local_groups = [g // tp for g in _groups(param, dim, tp)]
    per_rank = [p.split(local_groups, dim=dim) for p in pieces]
    return torch.cat([torch.cat([r[i] for r in per_rank], dim=dim) for i in range(len(local_groups))], dim=dim)


def full_state_dict(model: torch.nn.Module, grads: bool = False) -> dict[str, torch.Tensor]:
    """Whole tensors of every parameter (or of their gradients, ``grads=True``) on every TP rank."""
    out = {}
    for name, p in model.named_parameters():
        if grads:
            if p.grad is None:
                continue
            out[name] = gather_full(p, p.grad, name)
        else:
            out[name] = gather_full(p, name=name)
    if not grads:
        for name, b in model.named_buffers():
            if name in model.state_dict():
                out[name] = b.detach().clone()
    return out
