"""Inference with a distilled generator: ``pose-sample`` (conditioning and decoding by the model folder)."""

from pose_mcore.inference.sample import generate

__all__ = ["generate"]
