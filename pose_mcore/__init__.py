"""pose_mcore: Megatron-style POSE distillation of video diffusion transformers."""

from pose_mcore.checkpoint.load import load_model
from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, HunyuanConfig, hunyuan_config
from pose_mcore.config.wan import WAN_PRESETS, WanConfig, wan_config
from pose_mcore.models.hunyuan import HunyuanModel
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel

__all__ = ["HUNYUAN_PRESETS", "WAN_PRESETS", "HunyuanConfig", "HunyuanModel", "WanConfig", "WanModel",
           "destroy_parallel", "hunyuan_config", "initialize_parallel", "load_model", "wan_config"]
