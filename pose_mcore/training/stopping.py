"""Stopping a run before the scheduler kills it, at a step every rank agrees on.

A signal (``exit_signals``: SLURM's ``--signal=B:USR1@300`` forwarded by the launcher, a preemption's SIGTERM)
or the run's own wall-clock budget (``exit_duration_mins``, as Megatron-LM's ``--exit-duration-in-mins``) asks
for a stop; each rank finishes the step it is in, and after every step one all-reduce (MAX) over all ranks says
whether any rank was asked, so that a signal that reached one rank stops all of them at the same step. The
trainer then checkpoints that step and the ranks exit with :data:`STOP_STATUS`. The handler only sets a flag:
a second signal during the save changes nothing (the checkpoint is written atomically either way).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import torch
import torch.distributed as dist

STOP_STATUS = 75
"""Exit status of a run stopped to be resumed (``EX_TEMPFAIL``: try again later); the launcher and the sbatch
example requeue on it."""

NO_STOP, TIME_LIMIT, SIGNALLED = 0, 1, 2
"""What each rank reports in the agreement; the largest wins (a signal says more than a clock)."""


class RunStopped(Exception):
    """The run checkpointed and stopped to be resumed (exit :data:`STOP_STATUS`)."""


def signal_numbers(names: list[str]) -> list[signal.Signals]:
    """The signals of ``names`` (``SIGTERM``, ``USR1``, ...); raise ValueError naming an unknown one."""
    out = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        if key not in signal.Signals.__members__ or key in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{name!r} is not a signal a process can catch")
        out.append(signal.Signals[key])
    return out


class StopRequests:
    """Installs the handlers of ``signals`` and tells, after a step, whether the ranks stop. Python takes signal
    handlers in the main thread only: a trainer run from another thread (an embedding framework's worker) keeps
    the process's handlers and stops on its time limit or another rank's signal only.

    ``budget_s``: the run's wall-clock budget from ``start`` (``time.monotonic()``), or None; a stop is due once
    the time left would not cover another step and a checkpoint (``margin_s``, measured by the caller)."""

    def __init__(self, signals: list[str], budget_s: float | None, start: float,
                 device: torch.device | None = None) -> None:
        self.budget_s, self.start = budget_s, start
        self.active = bool(signals) or budget_s is not None
        """Whether anything can ask for a stop (the same on every rank: the config says): else no agreement."""
        self.device = device or torch.device("cpu")
        self.received: str | None = None
        self._previous: dict[signal.Signals, Callable | int | None] = {}
        wanted = signal_numbers(signals)
        if threading.current_thread() is threading.main_thread():
            for sig in wanted:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum).name

    def due(self, margin_s: float) -> str | None:
        """After a step, on every rank together: why the run stops now (``"SIGUSR1 on rank 1"``-like words), or
        None. One all-reduce over the default group when several ranks run and a stop can be asked for."""
        if not self.active:
            return None
        code = NO_STOP
        if self.received is not None:
            code = SIGNALLED
        elif self.budget_s is not None and time.monotonic() - self.start + margin_s >= self.budget_s:
            code = TIME_LIMIT
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([code], dtype=torch.int64, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        if code == SIGNALLED:
            return f"{self.received} received" if self.received else "a signal received by another rank"
        if code == TIME_LIMIT:
            return (f"exit_duration_mins={self.budget_s / 60:g} reached (the next step and a checkpoint take about "
                    f"{margin_s:.0f} s)")
        return None

    def close(self) -> None:
        """Restore the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
