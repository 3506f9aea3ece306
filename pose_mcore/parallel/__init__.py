"""Parallel runtime: process groups, sequence parallelism, TP-independent state dicts."""

from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict
from pose_mcore.parallel.state import ParallelInfo, destroy_parallel, initialize_parallel, seed_everything

__all__ = ["ParallelInfo", "finalize_tensor_parallel_grads", "destroy_parallel", "full_state_dict",
           "initialize_parallel", "load_full_state_dict", "seed_everything"]
