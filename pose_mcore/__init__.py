"""pose_mcore: Megatron-style POSE distillation of video diffusion transformers.

The names below are imported on first use (PEP 562), so ``import pose_mcore.notices`` (what the entry
points do first) does not import megatron-core.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "pose_mcore.checkpoint.load",
    "HUNYUAN_PRESETS": "pose_mcore.config.hunyuan", "HunyuanConfig": "pose_mcore.config.hunyuan",
    "hunyuan_config": "pose_mcore.config.hunyuan",
    "HUNYUAN15_PRESETS": "pose_mcore.config.hunyuan15", "HunyuanVideo15Config": "pose_mcore.config.hunyuan15",
    "hunyuan15_config": "pose_mcore.config.hunyuan15",
    "WAN_PRESETS": "pose_mcore.config.wan", "WanConfig": "pose_mcore.config.wan", "wan_config": "pose_mcore.config.wan",
    "HunyuanModel": "pose_mcore.models.hunyuan",
    "HunyuanVideo15Model": "pose_mcore.models.hunyuan15", "WanModel": "pose_mcore.models.wan",
    "destroy_parallel": "pose_mcore.parallel.state", "initialize_parallel": "pose_mcore.parallel.state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pose_mcore' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
