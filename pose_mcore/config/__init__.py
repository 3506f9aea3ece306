"""Configuration dataclasses and presets."""

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK, ConfigError, VideoDiTConfig
from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, HunyuanConfig, hunyuan_config
from pose_mcore.config.hunyuan15 import HUNYUAN15_PRESETS, HunyuanVideo15Config, hunyuan15_config
from pose_mcore.config.wan import WAN_PRESETS, WanConfig, wan_config

__all__ = ["HUNYUAN15_PRESETS", "HUNYUAN_PRESETS", "RECOMPUTE_EVERY_BLOCK", "WAN_PRESETS", "ConfigError",
           "HunyuanConfig", "HunyuanVideo15Config", "VideoDiTConfig", "WanConfig", "hunyuan15_config", "hunyuan_config",
           "wan_config"]
