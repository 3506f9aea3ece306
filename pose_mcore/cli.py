"""The command-line entry points: ``pose-train`` (what ``examples/pretrain_pose.sh`` executes on every
rank) and ``pose-convert`` (:mod:`pose_mcore.checkpoint.convert`).

    pose-train [--config examples/configs/tiny-cpu.yaml] [--resume] [key.path=value ...]

Without ``--config`` it runs the built-in default (``examples/configs/tiny-cpu.yaml``): a small
teacher pre-trained on the procedural moving-shapes videos, then POSE Phase I and Phase II, on the
CPU, writing checkpoints, samples and the final generator under ``outputs/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.io import CheckpointError  # noqa: E402
from pose_mcore.config.base import ConfigError  # noqa: E402
from pose_mcore.config.train import TrainConfigError, load_train_config  # noqa: E402
from pose_mcore.config.validate import validate_train_config  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel  # noqa: E402
from pose_mcore.training.trainer import Trainer, TrainingError  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "tiny-cpu.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    p.add_argument("--validate", action="store_true",
                   help="check the config for WORLD_SIZE ranks and exit (0: fine, 2: its problems, one per line)")
    p.add_argument("--exit-after", type=int, default=None, metavar="N",
                   help="stop after N steps of this run without writing anything more (as a preempted job)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p.parse_intermixed_args(argv)  # options and overrides in any order


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    owns_groups = not dist.is_initialized()  # an embedding process (a test) keeps its own
    try:
        config = load_train_config(config_path, args.overrides)
        if args.validate:
            validate_train_config(config, int(os.environ.get("WORLD_SIZE", 1)))
            return 0
        trainer = Trainer(config, exit_after=args.exit_after)
        if trainer.info.rank == 0:
            print(f"pose-train: {config.preset} ({trainer.family.name}), phases {config.phases}, "
                  f"TP={trainer.info.tp_size} (sequence parallel={trainer.model_config.sequence_parallel}), "
                  f"DP={trainer.info.dp_size}, output {config.output_dir}", flush=True)
        generator = trainer.run(resume=args.resume)
        if trainer.info.rank == 0:
            print(f"pose-train: done; generator at {generator}", flush=True)
    except (TrainConfigError, ConfigError, CheckpointError) as e:
        if int(os.environ.get("RANK", 0)) == 0:  # every rank finds the same problems; one prints them
            print("\n".join(f"pose-train: error: {line}" for line in str(e).splitlines()), file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"pose-train: stopped: {e}", file=sys.stderr)
        return 1
    finally:
        if owns_groups:
            destroy_parallel()
    return 0


def convert(argv: list[str] | None = None) -> int:
    """``pose-convert``: see :mod:`pose_mcore.checkpoint.convert`."""
    from pose_mcore.checkpoint.convert import main as convert_main

    return convert_main(argv)


if __name__ == "__main__":
    sys.exit(main())
