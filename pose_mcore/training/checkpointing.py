"""Training checkpoints: everything needed to continue exactly where a run stopped, written atomically.

A checkpoint is a folder ``<output>/checkpoints/step-<global step>/`` holding ``meta.json`` (phase,
steps, data position), one safetensors file per role with whole (TP-independent) tensors under
pose_mcore's names, and ``rank-<r>.pt`` per rank with optimiser, scheduler and RNG states. For the
frozen base only its trainable LoRA tensors are written: the teacher weights come from the teacher
checkpoint (or ``<output>/teacher`` when the run trained it), so a 14B run does not rewrite them at
every checkpoint. A checkpoint is written to a temporary folder and renamed; ``latest`` names the
newest complete one. A run killed while writing leaves the previous checkpoint in place.
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
from torch import nn

from pose_mcore.checkpoint.convert import finish_pose_checkpoint
from pose_mcore.checkpoint.io import SafetensorsStreamWriter, atomic_destination, open_source
from pose_mcore.checkpoint.load import load_slices
from pose_mcore.faults import fault_point
from pose_mcore.parallel.sharding import full_shape, gather_full


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(folder: Path, meta: dict[str, Any], roles: dict[str, nn.Module], rank_state: dict[str, Any]
                    ) -> Path:
    """Write a checkpoint (all ranks call this). Whole tensors are gathered over the TP ranks one at a time
    and streamed into the role's file by rank 0: no rank ever holds more than one whole tensor beside its
    own slices (a 14B role is ~65 GB in fp32; gathering it per rank would not fit)."""
    rank = dist.get_rank()
    final = folder / f"step-{meta['global_step']:08d}"
    tmp = folder / f".staging-{meta['global_step']:08d}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".staging-*"):  # checkpoints whose writer was killed
            shutil.rmtree(stale)
    dist.barrier()
    with _rank0_folder(tmp) as staging:
        for name, module in roles.items():
            keep = _trainable_names(module) if name in FROZEN_BASE_ROLES else None
            stream_full_state_dict(module, None if staging is None else staging / f"{name}.safetensors", keep)
        if staging is not None:
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    dist.barrier()
    torch.save(rank_state, tmp / f"rank-{rank}.pt")
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


def stream_full_state_dict(module: nn.Module, path: Path | None, names: set[str] | None = None) -> None:
    """Gather ``module``'s whole tensors (those in ``names``, default all) one at a time over the TP ranks
    (every TP rank calls this) and, where ``path`` is given, write them into that safetensors file as they
    come: memory beyond the module's own slices is one whole tensor."""
    tensors = [(n, t) for n, t in module.state_dict(keep_vars=True).items()
               if not n.endswith("_extra_state") and (names is None or n in names)]
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


def load_checkpoint(path: Path, roles: dict[str, nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the roles' weights, each rank reading only its own slices; return (meta, this rank's state)."""
    meta = json.loads((path / "meta.json").read_text())
    for name, module in roles.items():
        # the frozen base's file holds its trainable tensors only: the rest is the teacher's, already there
        load_slices(module, open_source(path / f"{name}.safetensors"), partial=name in FROZEN_BASE_ROLES)
    state = torch.load(path / f"rank-{dist.get_rank()}.pt", weights_only=False)
    return meta, state
