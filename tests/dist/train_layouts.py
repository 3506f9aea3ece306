"""Run under torchrun with 4 ranks: one Phase I and one Phase II step in each of two layouts, from the TP=1
reference's initial weights (``--reference``, written by tests/test_train_parallel.py): TP=2 (sequence
parallelism) x DP=2 with micro-batches of 1 and 2 accumulation steps, and CP=2 x TP=2 (DP=1: DDP and the
distributed optimizer work over the CP ranks) with micro-batches of 2 and 2 accumulation steps, both with the
distributed optimizer; saves the metrics and the updated weights (whole tensors)."""

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


LAYOUTS = {"tp2_dp2": (2, 1, 1), "cp2_tp2": (2, 2, 2)}
"""name -> (tp, cp, micro-batch size); the global batch is 4 in both."""
LAYOUT_CASES = {"tiny-t2v": ("tp2_dp2", "cp2_tp2"), "tiny-i2v": ("tp2_dp2",), "tiny-hunyuan-t2v": ("cp2_tp2",),
                "tiny-t2v-feature-r1": ("cp2_tp2",)}
"""case of tests/phase_fixtures.py -> the layouts it runs in."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args()
    reference = torch.load(args.reference)
    results = {}
    with robust_optimisers():
        for layout, (tp, cp, micro) in LAYOUTS.items():
            initialize_parallel(tp, cp, seed=7)
            results[layout] = {
                case: two_phase_steps(case, micro, 2, init, Engine(distributed_optimizer=True),
                                      tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=True)
                for case, init in reference.items() if layout in LAYOUT_CASES[case]}
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
