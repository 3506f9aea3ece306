"""The training loop, optimiser step, checkpoints and logging."""

from pose_mcore.training.trainer import Trainer, TrainingError

__all__ = ["Trainer", "TrainingError"]
