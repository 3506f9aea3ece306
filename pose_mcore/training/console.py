"""What a run writes about itself besides its metrics: each rank's output lines stamped with the time and the rank
when they go to a file (a SLURM log, nohup, CI) rather than a terminal, and the run's record (its config, the
versions it ran with, each start of it) in the output folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import torch

from pose_mcore.checkpoint.io import atomic_destination

PACKAGES = ("torch", "megatron-core", "diffusers", "transformers", "triton", "transformer-engine", "flash-attn",
            "pose_mcore")
"""Distributions whose versions a run records (those installed)."""


class StampedLines(io.TextIOBase):
    """A text stream that starts every line it passes on with ``YYYY-mm-dd HH:MM:SS rank R | ``."""

    def __init__(self, stream: TextIO, rank: int) -> None:
        self.stream, self.rank = stream, rank
        self.at_line_start = True

    def write(self, text: str) -> int:
        stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S')} rank {self.rank} | "
        out = []
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                out.append(stamp)
            out.append(piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def stamped_output(rank: int) -> Iterator[None]:
    """In the body, stamp this rank's stdout and stderr lines that do not go to a terminal."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if s.isatty() else StampedLines(s, rank) for s in saved)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES`, Python's and CUDA's (when torch has it)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def git_commit() -> str | None:
    """The commit of the pose_mcore checkout this runs from (with ``-dirty`` if changed), or None when it is not
    a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def record_start(output: Path, config: dict[str, Any], layout: str, resumed_from: str | None) -> None:
    """Rank 0, at every start of a run: write ``run.json`` (the config, versions, commit, first start) once, and
    add this start (time, host, SLURM job, layout, the checkpoint it resumed from) to ``starts.jsonl``."""
    start = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "layout": layout,
             "resumed_from": resumed_from}
    start |= {k: os.environ[v] for k, v in (("slurm_job", "SLURM_JOB_ID"), ("slurm_restart", "SLURM_RESTART_COUNT"))
              if v in os.environ}
    record = output / "run.json"
    if not record.is_file():
        with atomic_destination(record, overwrite=False) as tmp:
            tmp.write_text(json.dumps({"config": config, "versions": versions(), "git_commit": git_commit(),
                                       "first_start": start}, indent=2, default=str))
    with open(output / "starts.jsonl", "a") as f:
        f.write(json.dumps(start) + "\n")
