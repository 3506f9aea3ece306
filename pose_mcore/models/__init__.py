"""Video DiT models."""

from pose_mcore.models.hunyuan import HunyuanModel, hunyuan_block_specs
from pose_mcore.models.hunyuan15 import HunyuanVideo15Model
from pose_mcore.models.output import TransformerOutput
from pose_mcore.models.registry import FAMILIES, ModelFamily, family_of_config, family_of_preset
from pose_mcore.models.wan import WanBlock, WanModel, wan_block_spec

__all__ = ["FAMILIES", "HunyuanModel", "HunyuanVideo15Model", "ModelFamily", "TransformerOutput", "WanBlock",
           "WanModel", "family_of_config", "family_of_preset", "hunyuan_block_specs", "wan_block_spec"]
