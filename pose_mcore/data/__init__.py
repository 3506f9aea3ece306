"""Datasets: procedural moving shapes (no download) and pre-computed latents; resumable batches.

Imported on first use (PEP 562), as the package's own names: ``pose-prepare`` (``pose_mcore.data.prepare``)
filters third-party notices before anything here imports megatron-core."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"DatasetError": "latents", "LatentDataset": "latents", "write_latent_dataset": "latents",
            "ProceduralConfig": "procedural", "ProceduralVideos": "procedural", "BatchStream": "sampler"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pose_mcore.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pose_mcore.data.{_EXPORTS[name]}"), name)
