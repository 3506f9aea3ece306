"""Configuration dataclasses and presets."""

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK, ConfigError, VideoDiTConfig
from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, HunyuanConfig, hunyuan_config
from pose_mcore.config.wan import WAN_PRESETS, WanConfig, wan_config

__all__ = ["HUNYUAN_PRESETS", "RECOMPUTE_EVERY_BLOCK", "WAN_PRESETS", "ConfigError", "HunyuanConfig", "VideoDiTConfig",
           "WanConfig", "hunyuan_config", "wan_config"]
