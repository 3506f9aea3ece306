"""Load a pose_mcore checkpoint into a model: each tensor-parallel rank reads only its own slices."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state

from pose_mcore.checkpoint.configs import make_config
from pose_mcore.checkpoint.convert import FORMAT, detect
from pose_mcore.checkpoint.io import CheckpointError, TensorSource
from pose_mcore.models.registry import build_empty
from pose_mcore.parallel.sharding import local_ranges
from pose_mcore.parallel.state import initialize_parallel, run_device


def load_model(path: str | Path, **config: Any) -> torch.nn.Module:
    """The model of a pose_mcore checkpoint, weights loaded, in eval mode.

    Its tensor-parallel size is the initialised one (TP=1, initialising a single-rank group, when
    parallel state is not initialised). ``config`` sets runtime fields (``sequence_parallel``,
    ``params_dtype``, ``attn_impl``, ...). Each rank reads only its slices (safetensors slice reads).
    """
    path = Path(path)
    found = detect(path)
    if found.layout != "pose":
        raise CheckpointError(f"{path}: load_model reads pose_mcore checkpoints ({FORMAT}); this is {found.layout} "
                              "(convert it with: pose-convert import)")
    if not parallel_state.model_parallel_is_initialized():
        initialize_parallel(1)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    cfg = make_config(found.family, found.config.architecture(), tensor_model_parallel_size=tp,
                      context_parallel_size=parallel_state.get_context_parallel_world_size(), **config)
    # Built on the meta device (no memory, no random init), then given storage that the checkpoint fills.
    model = build_empty(cfg, run_device())
    load_slices(model, found.source)
    return model.eval()


def check_names(what: str, wanted: Iterable[str], have: Iterable[str], partial: bool = False) -> None:
    """Raise :class:`CheckpointError` ``<what>: missing [...]; unexpected [...]`` unless the checkpoint's tensor
    names ``have`` are the model's ``wanted`` ones (``partial``: a subset of them)."""
    wanted, have = set(wanted), set(have)
    missing = [] if partial else sorted(wanted - have)
    unexpected = sorted(have - wanted)
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing {missing[:20]}; unexpected {unexpected[:20]}")


def load_slices(model: torch.nn.Module, source: TensorSource, partial: bool = False) -> None:
    """Copy this rank's slice of each of ``model``'s tensors from ``source`` (whole, TP-independent tensors
    under the model's names), reading only that slice. ``partial``: the source may hold a subset (the
    other tensors keep their values); otherwise every tensor must be there. Nothing else may be."""
    wanted = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}
    have = set(source.keys())
    what = type(getattr(model, "config", model)).__name__  # a pose_mcore model: its config class
    check_names(f"{source.path}: does not fit {what}", wanted, have, partial)
    with torch.no_grad():
        for name, param in wanted.items():
            if name not in have:
                continue
            full_shape = source.shape(name)
            try:
                where = local_ranges(param, full_shape, name)
            except ValueError as e:
                raise CheckpointError(f"{source.path}: {e}") from e
            local = source.get(name) if where is None else source.get_ranges(name, *where)
            if tuple(local.shape) != tuple(param.shape):
                raise CheckpointError(f"{source.path}: tensor {name!r} has shape {full_shape}; the model needs "
                                      f"{tuple(param.shape)} on this rank")
            param.copy_(local.to(param.dtype))
