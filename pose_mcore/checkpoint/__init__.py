"""Checkpoint layouts and I/O."""
