"""Checkpoint layouts, streaming I/O, conversion and loading."""

from pose_mcore.checkpoint.convert import LAYOUTS, export_checkpoint, import_checkpoint, inspect_checkpoint
from pose_mcore.checkpoint.io import CheckpointError
from pose_mcore.checkpoint.load import load_model

__all__ = ["LAYOUTS", "CheckpointError", "export_checkpoint", "import_checkpoint", "inspect_checkpoint", "load_model"]
