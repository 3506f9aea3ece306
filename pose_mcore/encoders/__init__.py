"""A model folder's own encoders, VAE and latent normalisation (what the DiT is conditioned on)."""

from pose_mcore.encoders.model import FIELDS, PIPELINES, TEXT_FIELDS, EncoderError, ModelEncoders

__all__ = ["FIELDS", "PIPELINES", "TEXT_FIELDS", "EncoderError", "ModelEncoders"]
