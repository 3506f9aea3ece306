"""Run under torchrun with 2 ranks (TP=2, sequence parallelism): the replica check of a tiny Wan model passes as
built, and after rank 1 alone changes one replicated weight (a norm's) and one of its own TP slices, it fails on
both ranks naming the replicated weight only (a TP slice has no copy on another rank at DP=1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from pose_mcore.config.wan import wan_config
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.replicas import ReplicaDrift, check_replicas, parameter_replicas
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    initialize_parallel(2, seed=3)
    model = WanModel(wan_config("tiny-t2v", tensor_model_parallel_size=2, sequence_parallel=True))
    check_replicas(parameter_replicas("generator", model), "as built")
    params = dict(model.named_parameters())
    replicated, split = "blocks.0.norm2.weight", "blocks.0.self_attention.linear_q.weight"
    assert not getattr(params[replicated], "tensor_model_parallel", False)
    assert params[split].tensor_model_parallel
    if dist.get_rank() == 1:
        with torch.no_grad():
            params[replicated].add_(1e-7)
            params[split].add_(1.0)
    try:
        check_replicas(parameter_replicas("generator", model), "after a step")
        message = None
    except ReplicaDrift as e:
        message = str(e)
    messages = [None, None]
    dist.all_gather_object(messages, message)
    if dist.get_rank() == 0:
        torch.save(messages, out)
    destroy_parallel()


if __name__ == "__main__":
    main()
