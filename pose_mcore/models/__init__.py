"""Video DiT models."""

from pose_mcore.models.output import TransformerOutput
from pose_mcore.models.wan import WanBlock, WanModel, wan_block_spec

__all__ = ["TransformerOutput", "WanBlock", "WanModel", "wan_block_spec"]
