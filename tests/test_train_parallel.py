"""Every layout is the same training. One step of every phase (teacher, Phase I, Phase II with each backbone mode
and each head; Wan T2V and I2V, HunyuanVideo T2V: tests/phase_fixtures.py's LAYOUT_CASES) at TP=2 (with and
without sequence parallelism) x DP=2, CP=2 x DP=2 and CP=2 x TP=2 (4 gloo ranks under torchrun, the distributed optimizer,
micro-batches with 2 accumulation steps) against the same step at TP=1 x DP=1 on the whole global batch of 4 in
one micro-batch (this process, replicated optimiser), from the same weights:

- the drift guard: every weight and every reduced gradient that several ranks hold is bitwise the same on each
  (pose_mcore/parallel/replicas.py); a lost reduction anywhere shows there after one step;
- every trained parameter's reduced gradient, of every optimiser (generator, fake-score LoRA, head with its
  queries and norms, the backbone when trained), equals TP=1's on the tensor's scale;
- the first optimiser step with the default Adam epsilon moves each weight as TP=1's does wherever the gradient
  is above rounding; where it is not (gradients zero in exact arithmetic, such as key biases under a softmax),
  Adam turns rounding into a step of +-lr, so there the weights may differ by up to 2 lr.

The kernels run their torch references here (a CPU run's default): the head's gradient came back with the
strides that megatron's all-reduce dropped only there. Every random draw belongs to a sample, not a rank (pose/draws.py): what differs between layouts is the order of
summation. Its size, measured at TP=1 alone by cutting the same batch into 4 micro-batches instead of 1: up to
3.5e-5 of a tensor's scale for the teacher's and Phase I's gradients, up to 8e-4 for Phase II's (the
finite-difference R1 divides a difference of two nearly equal logits by a small perturbation; and the generator's
gradient comes after the discriminator's Adam step). The tolerances are a few times those; the defects they catch
are of order one (the semantic head's lost TP reduction gave 0.40-0.66 of the gradient)."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from conftest import DEVICE, assert_grads_close, torchrun, torchrun_results
from phase_fixtures import LAYOUT_CASES, layout_step

from pose_mcore.engine.optimizer import Engine

LAYOUTS = ("tp2_dp2", "tp2_nosp_dp2", "cp2_dp2", "cp2_tp2")
GRAD_REL = {"teacher": 2e-4, "phase1": 2e-4, "phase2": 5e-3}
"""Relative gradient tolerance per phase (see the module docstring)."""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from pose_mcore.parallel.state import initialize_parallel

    initialize_parallel(1)
    # The kernels' torch references, as a CPU run without TRITON_INTERPRET (the demo) computes: their gradients
    # have the strides that hid the head's lost reduction from the interpreter's (tests/test_kernels_* hold the
    # two backends equal, values and gradients).
    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "0"} if DEVICE.type == "cpu" else {}):
        reference = {c: layout_step(c, micro=4, accumulation=1, engine=Engine(distributed_optimizer=False))
                     for c in LAYOUT_CASES}
        folder = tmp_path_factory.mktemp("train_layouts")
        torch.save({c: {k: v for k, v in r.items() if k.startswith("init.")} for c, r in reference.items()},
                   folder / "reference.pt")
        torchrun("train_layouts.py", "--out", str(folder / "out.pt"), "--reference", str(folder / "reference.pt"),
                 nproc=4, timeout=900)
    return reference, torch.load(folder / "out.pt")


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_copies_held_by_several_ranks_are_bitwise_equal(results, layout):
    drifted = {case: r["mismatches"] for case, r in results[1][layout].items() if r["mismatches"]}
    assert not drifted, f"{layout}: {drifted}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_every_role_gets_the_tp1_gradient_and_update(results, layout, case):
    ref, par = results[0][case], results[1][layout][case]
    rel = GRAD_REL[LAYOUT_CASES[case][1]]
    assert par["metrics"]["stepped"] == ref["metrics"]["stepped"] == 1.0
    # loss_g is the discriminator's logit after its first Adam step, which moved rounding-level gradients by +-lr
    after_d_step = {"loss_g": 2 * ref["lr"]["discriminator"]} if "loss_g" in ref["metrics"] else {}
    for name, value in ref["metrics"].items():
        assert par["metrics"][name] == pytest.approx(value, rel=rel, abs=after_d_step.get(name, 1e-6)), \
            f"{layout} {case} {name}"
    grads = sorted(k for k in ref if k.startswith("grads."))
    assert grads and grads == sorted(k for k in par if k.startswith("grads."))
    for key in grads:
        assert_grads_close(par[key], ref[key], rel, f"{layout} {case} {key}: ")
    _assert_first_adam_step(ref, par, f"{layout} {case}")


def _assert_first_adam_step(ref: dict, par: dict, label: str) -> None:
    """Each trained weight moved as TP=1's did (within 1e-3 lr) where its gradient is above rounding (a hundredth
    of the tensor's scale, or of a thousandth of the optimiser's largest gradient where the whole tensor is smaller:
    some are zero in exact arithmetic, such as the conv head's time MLP, whose logit offset is the same for the
    real and the fake sample of a pair), and by at most 2 lr more elsewhere; the update is not empty."""
    roles = {"teacher": "generator", "generator": "generator", "fake": "base", "discriminator": None}
    for opt, lr in ref["lr"].items():
        grads = ref[f"grads.{opt}"]
        role = roles[opt]
        modules = ["head", "disc_backbone"] if role is None else [role]
        moved, floor = 0, 1e-3 * max(g.abs().max().item() for g in grads.values())
        for name, g in grads.items():
            index, pname = name.split(".", 1)
            module = modules[int(index)]
            before, a, b = ref[f"init.{module}"][pname], ref[f"after.{module}"][pname], par[f"after.{module}"][pname]
            diff = (b.to(a.device) - a).abs()
            significant = g.abs() > 1e-2 * max(g.abs().max().item(), floor)
            worst = diff[significant].max().item() if significant.any() else 0.0
            assert worst <= 1e-3 * lr, f"{label} {opt} {pname}: the step differs by {worst:.3g} > 1e-3 lr {lr}"
            assert diff.max().item() <= 2.01 * lr, f"{label} {opt} {pname}: differs by more than 2 lr"
            moved += int(not torch.equal(a, before))
        assert moved, f"{label} {opt}: no weight moved"


@pytest.mark.slow
def test_resume_with_the_distributed_optimizer_is_exact(tmp_path_factory):
    """TP=1 x DP=2 with the distributed optimizer and accumulation, stopped mid-Phase I and resumed: every rank
    reloads its own optimiser shards and the run ends bit-identical to the uninterrupted one."""
    result = torchrun_results(tmp_path_factory, "resume_dp.py")
    whole, split = result["whole"], result["split"]
    assert whole["generator"].keys() == split["generator"].keys()
    for k, v in whole["generator"].items():
        assert torch.equal(v, split["generator"][k]), k
    last = {(r["phase"], r["step"]): r for r in split["metrics"]}
    for r in whole["metrics"]:
        if r["phase"] == "phase2":
            assert last[(r["phase"], r["step"])] == r
