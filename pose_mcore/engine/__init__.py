"""The training engine every phase trains with: megatron-core DDP, the (distributed) optimiser, gradient
accumulation."""

from pose_mcore.engine.ddp import data_parallel
from pose_mcore.engine.optimizer import Engine, Optimizer, StepResult

__all__ = ["Engine", "Optimizer", "StepResult", "data_parallel"]
