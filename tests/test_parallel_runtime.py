"""The parallel runtime on the CPU: the compatibility patches, seeding, sequence helpers, sharding."""

from __future__ import annotations

import pytest
import torch
from conftest import torchrun_results
from megatron.core import tensor_parallel

from pose_mcore.parallel.cpu_compat import CpuRNGStatesTracker, apply_cpu_compat
from pose_mcore.parallel.sequence import pad_sequence
from pose_mcore.parallel.sharding import load_full_state_dict
from pose_mcore.parallel.state import seed_everything

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compatibility only applies without CUDA")


def test_patches_in_force(tp1):
    assert apply_cpu_compat()
    assert torch.cuda.current_device() == torch.device("cpu")
    assert isinstance(tensor_parallel.get_cuda_rng_tracker(), CpuRNGStatesTracker)


def test_rng_tracker_fork_is_reproducible_and_isolated(tp1):
    seed_everything(7)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    with tracker.fork():
        first = torch.rand(4)
    outside = torch.rand(4)
    seed_everything(7)
    with tracker.fork():
        assert torch.equal(torch.rand(4), first)
    assert torch.equal(torch.rand(4), outside)  # the fork did not advance the default generator
    assert not torch.equal(first, outside)


def test_rng_tracker_rejects_duplicates():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="seed 1 already exists"):
        tracker.add("b", 1)
    with pytest.raises(ValueError, match="'c' was not added"):
        with tracker.fork("c"):
            pass


def test_pad_sequence():
    x = torch.arange(10.0).view(5, 2)
    padded = pad_sequence(x, 4)
    assert padded.shape == (8, 2) and torch.equal(padded[:5], x) and not padded[5:].any()
    assert pad_sequence(x, 5) is x


def test_load_full_state_dict_names_missing_and_unexpected(tp1):
    model = torch.nn.Linear(2, 3)
    with pytest.raises(KeyError, match=r"missing \['bias'\]; unexpected \['extra'\]"):
        load_full_state_dict(model, {"weight": torch.zeros(3, 2), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"bias: shape \(4,\) does not fit the model's \(3,\)"):
        load_full_state_dict(model, {"weight": torch.zeros(3, 2), "bias": torch.zeros(4)})


def test_rank0_failures_travel_as_themselves_or_named():
    """What on_rank0 sends the other ranks: the exception itself when it pickles, else a RuntimeError naming
    it (a lock does not pickle); one process: the result, or the exception raised as it is."""
    import threading

    from pose_mcore.parallel.rank0 import _portable, on_rank0

    error = ValueError("bad --image")
    assert _portable(error) is error and _portable(None) is None
    unpicklable = _portable(TypeError(threading.Lock()))
    assert isinstance(unpicklable, RuntimeError) and str(unpicklable).startswith("rank 0 failed: TypeError: ")
    assert on_rank0(lambda: 3) == 3
    with pytest.raises(ValueError, match="bad --image"):
        on_rank0(lambda: (_ for _ in ()).throw(error))


def test_replica_check_names_a_drifted_copy(tmp_path_factory):
    """parallel/replicas.py: silent on a model as built; one replicated weight changed by 1e-7 on one rank fails
    the check on both ranks, naming that weight and the ranks (a TP slice changed on one rank is not a copy)."""
    messages = torchrun_results(tmp_path_factory, "replicas.py")
    assert messages[0] == messages[1] == (
        "after a step: 1 tensor(s) differ between the ranks that hold a copy:\n"
        "  generator.blocks.0.norm2.weight: 2 different values on ranks 0 vs 1")
