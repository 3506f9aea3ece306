"""Fault injection for the resume tests: a process kills itself (SIGKILL, as a preemption or an OOM
killer would), or sends itself ``POSE_FAULT_SIGNAL`` (as a scheduler's warning would), at a named point of a
run. Off unless ``POSE_FAULT`` is set; never set by pose_mcore.

    POSE_FAULT=<point>[@<where>][,<point>[@<where>] ...]   POSE_FAULT_RANK=<rank>   POSE_FAULT_SIGNAL=USR1
    (rank: default every rank reaching the point; signal: default SIGKILL)

Points (``where`` is a global step, or the name of the destination being written):
    step@N          after the update of global step N, before it is logged or checkpointed
    checkpoint@N    while the checkpoint of global step N is written (its files staged, not yet renamed)
    phase_end@N     right after a phase's last checkpoint (global step N), before its export and sample
    write@NAME      while NAME (``teacher``, ``generator``) is written, before the rename that completes it
    phase_start@N   between phases: after the previous phase finished, before the next one is built
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "POSE_FAULT"
FAULT_RANK_ENV = "POSE_FAULT_RANK"
FAULT_SIGNAL_ENV = "POSE_FAULT_SIGNAL"
POINTS = ("step", "checkpoint", "phase_end", "write", "phase_start")


def fault_point(point: str, where: int | str | None = None) -> None:
    """Kill (or signal) this process here if ``POSE_FAULT`` names this point (and this rank)."""
    specs = os.environ.get(FAULT_ENV)
    if not specs:
        return
    for spec in specs.split(","):
        name, _, at = spec.partition("@")
        if name not in POINTS:
            raise ValueError(f"{FAULT_ENV}={spec!r}: unknown point {name!r}; points: {', '.join(POINTS)}")
        if name != point or (at and at != str(where)):
            continue
        rank = os.environ.get(FAULT_RANK_ENV)
        if rank is not None and rank != os.environ.get("RANK", "0"):
            return
        sig = signal.Signals[f"SIG{os.environ.get(FAULT_SIGNAL_ENV, 'KILL').upper().removeprefix('SIG')}"]
        print(f"fault injection: rank {os.environ.get('RANK', '0')} sent {sig.name} at {spec}", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), sig)
