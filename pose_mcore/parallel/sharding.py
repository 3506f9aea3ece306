"""Tensor-parallel-independent state dicts.

pose_mcore's checkpoints hold whole tensors under the model's own parameter names. A TP rank keeps
the slice that megatron-core's attributes describe (``tensor_model_parallel``, ``partition_dim``);
these helpers cut whole tensors into a rank's slices and gather slices back into whole tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def local_slice(full: torch.Tensor, param: torch.Tensor, name: str = "?") -> torch.Tensor:
    """This TP rank's slice of the whole tensor ``full`` for the (local) parameter ``param``."""
    if not _is_sharded(param):
        return full
    dim = _partition_dim(param, name)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if full.shape[dim] != param.shape[dim] * tp:
        raise ValueError(f"{name}: whole tensor of shape {tuple(full.shape)} does not split into "
                         f"{tp} slices of shape {tuple(param.shape)} along dim {dim}")
    return full.narrow(dim, rank * param.shape[dim], param.shape[dim])


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


def gather_full(param: torch.Tensor, local: torch.Tensor | None = None, name: str = "?") -> torch.Tensor:
    """All-gather the whole tensor from the TP slices of ``local`` (default: ``param`` itself)."""
    local = param.detach() if local is None else local.detach()
    if not _is_sharded(param) or parallel_state.get_tensor_model_parallel_world_size() == 1:
        return local.clone()
    dim = _partition_dim(param, name)
    group = parallel_state.get_tensor_model_parallel_group()
    pieces = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


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
