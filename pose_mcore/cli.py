"""``pose-train``: the training entry point that ``examples/pretrain_pose.sh`` executes on every rank.

    pose-train [--config examples/configs/tiny-cpu.yaml] [--resume] [key.path=value ...]

Without ``--config`` it runs the built-in default (``examples/configs/tiny-cpu.yaml``): a small
teacher pre-trained on the procedural moving-shapes videos, then POSE Phase I and Phase II, on the
CPU, writing checkpoints, samples and the final generator under ``outputs/``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

# megatron-core's runtime notices that say nothing to a user of this command
for _message in (".*tp_group is None", ".*CUDA_DEVICE_MAX_CONNECTIONS", ".*is deprecated",
                 ".*full scope is deprecated"):
    warnings.filterwarnings("ignore", message=_message)

from pose_mcore.checkpoint.io import CheckpointError  # noqa: E402
from pose_mcore.config.base import ConfigError  # noqa: E402
from pose_mcore.config.train import TrainConfigError, load_train_config  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel  # noqa: E402
from pose_mcore.training.trainer import Trainer, TrainingError  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "tiny-cpu.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    p.add_argument("--exit-after", type=int, default=None, metavar="N",
                   help="stop after N steps of this run without writing anything more (as a preempted job)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        config = load_train_config(config_path, args.overrides)
        trainer = Trainer(config, exit_after=args.exit_after)
        if trainer.info.rank == 0:
            print(f"pose-train: {config.preset} ({trainer.family.name}), phases {config.phases}, "
                  f"TP={trainer.info.tp_size} (sequence parallel={trainer.model_config.sequence_parallel}), "
                  f"DP={trainer.info.dp_size}, output {config.output_dir}", flush=True)
        generator = trainer.run(resume=args.resume)
        if trainer.info.rank == 0:
            print(f"pose-train: done; generator at {generator}", flush=True)
    except (TrainConfigError, ConfigError, CheckpointError) as e:
        print(f"pose-train: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"pose-train: stopped: {e}", file=sys.stderr)
        return 1
    finally:
        destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
