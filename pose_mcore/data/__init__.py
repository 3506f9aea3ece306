"""Datasets: procedural moving shapes (no download) and pre-computed latents; resumable batches."""

from pose_mcore.data.latents import DatasetError, LatentDataset, write_latent_dataset
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.data.sampler import BatchStream

__all__ = ["BatchStream", "DatasetError", "LatentDataset", "ProceduralConfig", "ProceduralVideos",
           "write_latent_dataset"]
