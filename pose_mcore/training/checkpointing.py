"""Training checkpoints: everything needed to continue where a run stopped, at any layout, written atomically.

A checkpoint is a folder ``<output>/checkpoints/step-<global step>/`` holding ``meta.json`` (phase, steps,
data position, the phase's counters, the layout it was saved at), a sharded checkpoint
(``checkpoint/sharded.py``: ``pieces-<rank>.safetensors`` and ``index.json``) of the roles' weights
(``<role>/<name>``) and the optimisers' states (``optimizer/<name>/...``), and ``rank-<r>.pt`` per rank
with its RNG states. Each rank writes only what it holds; a resume at another TP / DP size reads its
own slices from the pieces that overlap them. The RNG states are restored at the same layout only: every
random draw of a step belongs to a sample (``pose/draws.py``), so they do not decide a step. For the
frozen base only its trainable LoRA tensors are written: the teacher weights come from the teacher
checkpoint (or ``<output>/teacher`` when the run trained it), so a 14B run does not rewrite them at every
checkpoint. A checkpoint is written to a temporary folder and renamed; ``latest`` names the newest
complete one. A run killed while writing leaves the previous checkpoint in place.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import nn

from pose_mcore.checkpoint.convert import finish_pose_checkpoint
from pose_mcore.checkpoint.io import SafetensorsStreamWriter, atomic_destination
from pose_mcore.checkpoint.load import check_names
from pose_mcore.checkpoint.sharded import Piece, ShardedReader, save_pieces
from pose_mcore.faults import fault_point
from pose_mcore.parallel.sharding import full_shape, gather_full


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def layout() -> dict[str, int]:
    """The parallel layout of this run (saved with a checkpoint)."""
    return {"world_size": dist.get_world_size(),
            "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
            "context_parallel": parallel_state.get_context_parallel_world_size(),
            "data_parallel": parallel_state.get_data_parallel_world_size()}


def save_checkpoint(folder: Path, meta: dict[str, Any], roles: dict[str, nn.Module], optimizer: list[Piece]
                    ) -> Path:
    """Write a checkpoint (all ranks call this): the roles' weights and this rank's ``optimizer`` pieces, each
    rank its own (no gather: memory beyond the live tensors is nothing), and this rank's RNG states."""
    rank = dist.get_rank()
    final = folder / f"step-{meta['global_step']:08d}"
    tmp = folder / f".staging-{meta['global_step']:08d}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".staging-*"):  # checkpoints whose writer was killed
            shutil.rmtree(stale)
        tmp.mkdir()
        (tmp / "meta.json").write_text(json.dumps({**meta, "layout": layout()}, indent=2))
    dist.barrier()
    save_pieces(tmp, [*role_pieces(roles), *optimizer])
    torch.save(rng_state(), tmp / f"rank-{rank}.pt")
    fault_point("checkpoint", meta["global_step"])
    dist.barrier()
    if rank == 0:
        if final.exists():  # written before by a run that died before moving ``latest`` on; the same step again
            shutil.rmtree(final)
        tmp.rename(final)
        (folder / "latest.tmp").write_text(final.name)
        (folder / "latest.tmp").replace(folder / "latest")
    dist.barrier()
    return final


def export_pose_checkpoint(model: nn.Module, dst: Path, converted_from: str = "training") -> Path:
    """Write ``model`` as a pose_mcore checkpoint (all ranks call this): whole tensors gathered one at a
    time and streamed by rank 0 into one shard, then its index and config; atomic."""
    with _rank0_folder(dst) as tmp:
        stream_full_state_dict(model, None if tmp is None else tmp / EXPORT_SHARD)
        if tmp is not None:
            finish_pose_checkpoint(tmp, EXPORT_SHARD, model.config, converted_from)
    dist.barrier()
    return dst


EXPORT_SHARD = "model-00001-of-00001.safetensors"


@contextlib.contextmanager
def _rank0_folder(dst: Path) -> Iterator[Path | None]:
    """On rank 0 a new temporary folder that replaces ``dst`` when the body succeeds (nothing half-written);
    on the other ranks None (they take part in the gathers only)."""
    if dist.get_rank() != 0:
        yield None
        return
    with atomic_destination(dst, overwrite=True) as tmp:
        tmp.mkdir()
        yield tmp


def stream_full_state_dict(module: nn.Module, path: Path | None) -> None:
    """Gather ``module``'s whole tensors one at a time over the TP ranks
    (every TP rank calls this) and, where ``path`` is given, write them into that safetensors file as they
    come: memory beyond the module's own slices is one whole tensor."""
    tensors = [(n, t) for n, t in module.state_dict(keep_vars=True).items()
               if not n.endswith("_extra_state")]
    writer = None if path is None else SafetensorsStreamWriter(
        path, [(n, t.dtype, full_shape(t, n)) for n, t in tensors])
    for n, t in tensors:
        whole = gather_full(t, name=n)
        if writer is not None:
            writer.write(n, whole)
        del whole
    if writer is not None:
        writer.close()


FROZEN_BASE_ROLES = ("base",)
"""Roles whose checkpoint holds only their trainable tensors (the rest is rebuilt from the teacher)."""


def _trainable_names(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "latest"
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def role_pieces(roles: dict[str, nn.Module]) -> list[Piece]:
    """This rank's slices of the roles' weights (the frozen base's trainable tensors only)."""
    out = []
    for role, module in roles.items():
        keep = _trainable_names(module) if role in FROZEN_BASE_ROLES else None
        for name, t in module.state_dict(keep_vars=True).items():
            if not name.endswith("_extra_state") and (keep is None or name in keep):
                out.append(Piece(f"{role}/{name}", t.detach(), t))
    return out


def load_checkpoint(path: Path, roles: dict[str, nn.Module]) -> tuple[dict[str, Any], ShardedReader]:
    """Restore the roles' weights, each rank reading only its own slices in its own layout, and this rank's
    RNG states if the layout is the one saved; return the meta data and the reader (for the optimisers)."""
    meta = json.loads((path / "meta.json").read_text())
    reader = ShardedReader(path)
    with torch.no_grad():
        for role, module in roles.items():
            wanted = {n: t for n, t in module.state_dict(keep_vars=True).items() if not n.endswith("_extra_state")}
            saved = {k.removeprefix(f"{role}/") for k in reader.keys(f"{role}/")}
            check_names(f"{path}: role {role!r} does not fit the checkpoint", wanted, saved,
                        partial=role in FROZEN_BASE_ROLES)
            for name in sorted(saved):
                wanted[name].copy_(reader.local(f"{role}/{name}", wanted[name]))
    if meta.get("layout") == layout():
        set_rng_state(torch.load(path / f"rank-{dist.get_rank()}.pt", weights_only=False))
    return meta, reader
