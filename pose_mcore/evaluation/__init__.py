"""Quality measures for generated videos."""

from pose_mcore.evaluation.metrics import FeatureFD, attribute_scores, frechet_distance

__all__ = ["FeatureFD", "attribute_scores", "frechet_distance"]
