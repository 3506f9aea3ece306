"""Work that one rank does for all: ``on_rank0`` runs it on rank 0 and shares its result or its failure."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


def _portable(error: Exception | None) -> Exception | None:
    """``error`` as it can travel to the other ranks (pickled), or a RuntimeError naming it."""
    if error is None:
        return None
    try:
        pickle.dumps(error)
        return error
    except Exception:  # noqa: BLE001 - any pickling failure: send its description instead
        return RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")


def on_rank0(fn: Callable[[], T], share: bool = True) -> T | None:
    """``fn()`` on rank 0 only, its result broadcast to every rank (``share``; else the others get None). A
    failure there is raised on every rank (the same exception), so that a bad input seen by rank 0 ends all
    ranks with the same error instead of leaving the others waiting in the next collective."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - raised again below, on every rank
            error = e
    if world > 1:
        shared = [result if share and error is None else None, _portable(error)]
        dist.broadcast_object_list(shared, src=0)
        result = shared[0] if share else result
        error = error or shared[1]
    if error is not None:
        raise error
    return result
