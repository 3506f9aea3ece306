"""Every copy of a tensor that several ranks hold is bitwise the same: the check that catches a lost
reduction anywhere (as Megatron-LM's ``--check-weight-hash-across-dp-replicas-interval``, over the
tensor-parallel ranks too).

A parameter split over the TP ranks (megatron's ``tensor_model_parallel``) has one copy per TP rank,
held alike by every data- and context-parallel rank; a replicated one (norms, modulation tables, the
semantic head) is held alike by every rank. A gradient a rank holds reduced (DDP's ``main_grad``, or the
rank's shard of it with the distributed optimizer) is held alike by the ranks with the same shard. A
replicated weight whose gradient one TP rank computed from its token shard alone, without the sum over
the others, differs across the TP ranks after one step: losses and final weights hide that, the copies
do not.

Each rank hashes its tensors (BLAKE2b of the bytes) and the digests are all-gathered once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import nn


@dataclass(frozen=True)
class Replica:
    """One rank's copy of a tensor that other ranks hold too: those with the same ``name`` and ``copy``."""

    name: str
    copy: Hashable
    """Which copy: the TP rank for a TP slice, None for a replicated tensor (plus the shard, for gradients)."""
    tensor: torch.Tensor


def parameter_replicas(prefix: str, module: nn.Module) -> Iterator[Replica]:
    """The values of every parameter of ``module`` (trained or not), named ``<prefix>.<name>``."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, p in module.named_parameters():
        split = getattr(p, "tensor_model_parallel", False)
        yield Replica(f"{prefix}.{name}", tp_rank if split else None, p.detach())


def tensor_digest(t: torch.Tensor) -> str:
    """BLAKE2b (16 bytes, hex) of a tensor's bytes: equal exactly when the tensors are bitwise equal (dtype and
    shape aside)."""
    data = t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def replica_mismatches(replicas: Iterable[Replica], group: dist.ProcessGroup | None = None) -> list[str]:
    """The copies that differ between the ranks of ``group`` (default: all), one line each naming the tensor,
    the copy and the ranks; the same list on every rank (a collective: every rank must call it)."""
    mine = {(r.name, r.copy): tensor_digest(r.tensor) for r in replicas}
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return []
    everyone: list[dict] = [{} for _ in range(dist.get_world_size(group))]
    dist.all_gather_object(everyone, mine, group=group)
    held: dict[tuple, dict[str, list[int]]] = {}
    for rank, digests in enumerate(everyone):
        for key, digest in digests.items():
            held.setdefault(key, {}).setdefault(digest, []).append(rank)
    out = []
    for (name, copy), versions in held.items():
        if len(versions) > 1:
            ranks = " vs ".join(",".join(map(str, r)) for r in versions.values())
            where = "" if copy is None else f" (copy {copy})"
            out.append(f"{name}{where}: {len(versions)} different values on ranks {ranks}")
    return sorted(out)


class ReplicaDrift(RuntimeError):
    """Copies of a tensor that should be bitwise equal across ranks are not (a lost or extra reduction)."""


def check_replicas(replicas: Iterable[Replica], what: str) -> None:
    """Raise :class:`ReplicaDrift` on every rank, naming the tensors, if any copy differs across ranks."""
    bad = replica_mismatches(replicas)
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ReplicaDrift(f"{what}: {len(bad)} tensor(s) differ between the ranks that hold a copy:\n  {shown}")
