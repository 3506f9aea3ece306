"""Run under torchrun with 4 ranks: the small training run at TP=2 (sequence parallelism) x DP=2 with the
distributed optimizer, micro-batches of 1 and 2 accumulation steps, checkpointing every 2 steps, for
tests/test_checkpoint_reshard.py (which resumes its checkpoints at TP=1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_checkpoint_reshard import RUN  # noqa: E402

from pose_mcore.config.train import load_train_config  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel  # noqa: E402
from pose_mcore.training.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    overrides = [*RUN, "tensor_parallel=2", "micro_batch_size=1", f"output_dir={args.out}"]
    Trainer(load_train_config(None, overrides)).run()
    destroy_parallel()


if __name__ == "__main__":
    main()
