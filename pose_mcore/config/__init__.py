"""Configuration dataclasses and presets."""

from pose_mcore.config.wan import WAN_PRESETS, WanConfig, wan_config

__all__ = ["WAN_PRESETS", "WanConfig", "wan_config"]
