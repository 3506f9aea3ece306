"""The command-line entry points: ``pose-train`` (what ``examples/pretrain_pose.sh`` executes on every
rank) and ``pose-convert`` (:mod:`pose_mcore.checkpoint.convert`).

    pose-train [--config NAME | FILE.yaml] [--resume] [--validate] [--exit-after N] [key.path=value ...]

``--config`` takes a YAML file or the name of a config shipped in the package (``pose_mcore/configs``,
also ``examples/configs`` in a checkout): ``tiny-cpu``, ``tiny-cpu-tp2``, ``wan2.1-i2v-14b``,
``hunyuan-i2v-13b``. Without it, ``tiny-cpu`` runs (about 5 minutes on 2 CPU cores): a small image-to-video
teacher pre-trained on the procedural moving-shapes videos, then POSE Phase I and Phase II, writing checkpoints,
samples and the final generator under ``outputs/tiny-cpu`` and ending with a table measured on held-out videos.
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
from pose_mcore.parallel.state import destroy_parallel  # noqa: E402
from pose_mcore.training.stopping import STOP_STATUS, RunStopped  # noqa: E402
from pose_mcore.training.trainer import Trainer, TrainingError  # noqa: E402
from pose_mcore.training.validate import validate_train_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"
"""The shipped configs (package data)."""
DEFAULT_CONFIG = "tiny-cpu"


def resolve_config(name: str) -> Path:
    """A config file's path: ``name`` itself if it is a file, else the shipped config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIGS / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    raise TrainConfigError(f"{name}: cannot read the config (no such file, and no shipped config of that name; "
                           f"shipped: {known})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"YAML file, or the name of a shipped config (default: {DEFAULT_CONFIG})")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    p.add_argument("--validate", action="store_true",
                   help="check the config for WORLD_SIZE ranks and exit (0: fine, 2: its problems, one per line)")
    p.add_argument("--exit-after", type=int, default=None, metavar="N",
                   help="stop after N steps of this run without writing anything more (as a preempted job)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p.parse_intermixed_args(argv)  # options and overrides in any order


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    owns_groups = not dist.is_initialized()  # an embedding process (a test) keeps its own
    try:
        config = load_train_config(resolve_config(args.config), args.overrides)
        if args.validate:
            validate_train_config(config, int(os.environ.get("WORLD_SIZE", 1)))
            return 0
        trainer = Trainer(config, exit_after=args.exit_after)
        if trainer.info.rank == 0:
            print(f"pose-train: {config.preset} ({trainer.family.name}), phases {config.phases}, {trainer.layout()}, "
                  f"output {config.output_dir}", flush=True)
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
    except RunStopped:
        return STOP_STATUS  # rank 0 said where and why
    finally:
        if owns_groups:
            destroy_parallel()
    return 0


def convert(argv: list[str] | None = None) -> int:
    """``pose-convert``: see :mod:`pose_mcore.checkpoint.command`."""
    from pose_mcore.checkpoint.command import main as convert_main

    return convert_main(argv)


if __name__ == "__main__":
    sys.exit(main())
