"""The training loop (``trainer``), checkpoints and logging (the engine the phases train with is
:mod:`pose_mcore.engine`, below them)."""
