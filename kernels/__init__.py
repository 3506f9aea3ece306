"""pose_kernels: Triton kernels of the POSE discriminator, each beside its torch reference.

Importing this package launches nothing and works without a GPU (and without triton).
"""

from pose_kernels.logit_query_attention import MAX_QUERIES, logit_query_attention, merge_partial_attention
from pose_kernels.st_r1 import st_r1_penalty, st_r1_perturb

__all__ = ["MAX_QUERIES", "logit_query_attention", "merge_partial_attention", "st_r1_penalty", "st_r1_perturb"]
