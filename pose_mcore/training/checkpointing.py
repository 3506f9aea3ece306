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

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from pose_mcore.checkpoint.io import atomic_destination
from pose_mcore.faults import fault_point
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(folder: Path, meta: dict[str, Any], roles: dict[str, nn.Module], rank_state: dict[str, Any]
                    ) -> Path:
    """Write a checkpoint (all ranks call this: whole tensors are gathered across TP ranks)."""
    weights = {}
    for name, module in roles.items():
        keep = _trainable_names(module) if name in FROZEN_BASE_ROLES else None
        weights[name] = {k: v.contiguous().cpu() for k, v in full_state_dict(module).items()
                         if keep is None or k in keep}
    rank = dist.get_rank()
    final = folder / f"step-{meta['global_step']:08d}"
    tmp = folder / f".staging-{meta['global_step']:08d}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".staging-*"):  # checkpoints whose writer was killed
            shutil.rmtree(stale)
    dist.barrier()
    if rank == 0:
        with atomic_destination(tmp, overwrite=True) as staging:
            staging.mkdir()
            for name, state in weights.items():
                save_file(state, staging / f"{name}.safetensors")
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
    """Restore the roles' weights; return (meta, this rank's state)."""
    meta = json.loads((path / "meta.json").read_text())
    for name, module in roles.items():
        state = load_file(path / f"{name}.safetensors")
        if name in FROZEN_BASE_ROLES:  # trainable tensors only: the rest of the state is the teacher's
            state = {**full_state_dict(module), **state}
        load_full_state_dict(module, state)
    state = torch.load(path / f"rank-{dist.get_rank()}.pt", weights_only=False)
    return meta, state
