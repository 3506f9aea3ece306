"""Run under torchrun with 4 ranks: one Phase I and one Phase II step at TP=2 (sequence parallelism) x DP=2,
micro-batches of 1 with 2 accumulation steps and the distributed optimizer, from the TP=1 reference's
initial weights (``--reference``, written by tests/test_train_parallel.py); saves the metrics and the updated
weights (whole tensors)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phase_fixtures import robust_optimisers, two_phase_steps  # noqa: E402

from pose_mcore.engine.optimizer import Engine  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args()
    reference = torch.load(args.reference)
    initialize_parallel(2, seed=7)
    results = {}
    with robust_optimisers():
        for preset, init in reference.items():
            results[preset] = two_phase_steps(preset, 1, 2, init, Engine(distributed_optimizer=True),
                                              tensor_model_parallel_size=2, sequence_parallel=True)
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
