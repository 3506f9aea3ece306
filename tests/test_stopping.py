"""Stopping on the scheduler's word (pose_mcore/training/stopping.py): a 2-rank run (TP=2, sequence parallel)
signalled inside Phase II, on every rank or on one, or signalled again while it saves, checkpoints one common step,
ends with status 75 through the launcher, and resumed with the same command ends bit-identical to an uninterrupted
run; ``exit_duration_mins`` stops the same way. Signals are injected at a chosen step with ``POSE_FAULT`` and
``POSE_FAULT_SIGNAL`` (pose_mcore/faults.py)."""

from __future__ import annotations

import json
import signal

import pytest
from test_resume_faults import _assert_complete, _launch, _weights

from pose_mcore.training.stopping import STOP_STATUS, signal_numbers

# global steps: teacher 1-2, Phase I 3-4, Phase II 5-6 (checkpoint_every=1)
STOPS = [
    # every rank, after Phase II's first update, and again while step 5's checkpoint is being written
    ("step@5,checkpoint@5", None, "TERM", "SIGTERM received"),
    ("step@5", "1", "USR1", "a signal received by another rank"),  # rank 1 alone: rank 0 learns it in the agreement
]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    proc = _launch(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _stopped_at(out) -> dict:
    return json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "meta.json")
                      .read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "rank", "sig", "reason"), STOPS, ids=["term-all-twice", "usr1-one-rank"])
def test_a_signal_stops_at_one_step_and_resumes_to_the_same_bits(whole, tmp_path, fault, rank, sig, reason):
    run = tmp_path / "run"
    stopped = _launch(run, fault, rank, launcher=True, signal=sig)
    assert stopped.returncode == STOP_STATUS, stopped.stderr[-3000:]
    for point in fault.split(","):  # every injected signal was sent (the second one during the save)
        assert f"sent SIG{sig} at {point}" in stopped.stderr, point
    line = f"stopped at phase2 step 1 ({reason}); checkpoint {run / 'checkpoints' / 'step-00000005'}. Resume with"
    assert f"pose-train: {line}" in stopped.stdout and f"pretrain_pose.sh: {line}" in stopped.stderr
    meta = _stopped_at(run)
    assert (meta["phase"], meta["step"], meta["global_step"]) == ("phase2", 1, 5)
    assert not (run / "generator").exists()
    resumed = _launch(run)
    assert resumed.returncode == 0 and "resumed phase2 at step 1" in resumed.stdout, resumed.stderr[-3000:]
    _assert_complete(run)  # nothing half-written anywhere
    for export in ("generator", "teacher"):
        a, b = _weights(whole / export), _weights(run / export)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), export


@pytest.mark.slow
def test_exit_duration_stops_and_resumes_the_same_way(whole, tmp_path):
    run = tmp_path / "run"
    stopped = _launch(run, launcher=True, extra=("exit_duration_mins=0.0001",))
    assert stopped.returncode == STOP_STATUS, stopped.stderr[-3000:]
    assert "stopped at teacher step 1 (exit_duration_mins=0.0001 reached" in stopped.stderr
    assert _stopped_at(run)["global_step"] == 1
    resumed = _launch(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(whole / "generator"), _weights(run / "generator")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_signal_names():
    assert signal_numbers(["SIGTERM", "usr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    for bad in ("SIGKILL", "NOPE"):
        with pytest.raises(ValueError, match=f"'{bad}' is not a signal a process can catch"):
            signal_numbers([bad])


def test_requests_from_another_thread_install_nothing():
    """Python takes signal handlers in the main thread only: a trainer in a worker thread keeps the process's."""
    import threading

    from pose_mcore.training.stopping import StopRequests

    before, seen = signal.getsignal(signal.SIGUSR1), []

    def worker():
        stops = StopRequests(["SIGUSR1"], budget_s=None, start=0.0)
        seen.append((signal.getsignal(signal.SIGUSR1), stops.due(0.0)))
        stops.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [(before, None)]
    stops = StopRequests(["SIGUSR1"], budget_s=None, start=0.0)  # the main thread: installed, then restored
    assert signal.getsignal(signal.SIGUSR1) == stops._handle
    signal.raise_signal(signal.SIGUSR1)
    assert stops.due(0.0) == "SIGUSR1 received"
    stops.close()
    assert signal.getsignal(signal.SIGUSR1) == before
