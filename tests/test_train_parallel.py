"""The engine's layouts compute the same update: one Phase I and one Phase II step at TP=2 (sequence
parallelism) x DP=2 with micro-batches of 1 and 2 accumulation steps, and at CP=2 x TP=2 with micro-batches
of 2 and 2 accumulation steps (Wan T2V and HunyuanVideo T2V; Wan I2V at TP=2 x DP=2; at CP=2 x TP=2 also Wan T2V with a
trained backbone and ST-R1 on its features, summed over the token shards), both with the distributed optimizer (4
ranks, torchrun with gloo), equal the same steps at TP=1 x DP=1 on the whole global batch of 4 in one
micro-batch (this process, replicated optimiser): the losses and every updated weight (generator, fake LoRA,
EMA, head, whose semantic head merges its attention over the token shards of the CP and TP ranks). Every random draw belongs to a sample, not a rank (pose/draws.py), so the two runs see the same
noise; what differs is the summation order of the gradients (over ranks, micro-batches, TP slices)."""

from __future__ import annotations

import pytest
import torch
from conftest import torchrun, torchrun_results
from phase_fixtures import PHASE1, PHASE2, robust_optimisers, two_phase_steps

from pose_mcore.engine.optimizer import Engine

CASES = ("tiny-t2v", "tiny-i2v", "tiny-hunyuan-t2v", "tiny-t2v-feature-r1")
LAYOUTS = [("tp2_dp2", "tiny-t2v"), ("tp2_dp2", "tiny-i2v"), ("cp2_tp2", "tiny-t2v"), ("cp2_tp2", "tiny-hunyuan-t2v"),
           ("cp2_tp2", "tiny-t2v-feature-r1")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from pose_mcore.parallel.state import initialize_parallel

    initialize_parallel(1)
    with robust_optimisers():
        reference = {c: two_phase_steps(c, micro=4, accumulation=1, engine=Engine(distributed_optimizer=False))
                     for c in CASES}
    folder = tmp_path_factory.mktemp("train_layouts")
    torch.save({p: {k: v for k, v in r.items() if k.startswith("init.")} for p, r in reference.items()},
               folder / "reference.pt")
    torchrun("train_layouts.py", "--out", str(folder / "out.pt"), "--reference", str(folder / "reference.pt"),
             nproc=4, timeout=600)
    return reference, torch.load(folder / "out.pt")


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "case"), LAYOUTS)
def test_layouts_compute_the_same_update(results, layout, case):
    ref, par = results[0][case], results[1][layout][case]
    for phase in ("phase1", "phase2"):
        assert ref[phase]["stepped"] == par[phase]["stepped"] == 1.0
        for key, value in ref[phase].items():
            if not key.startswith("stepped"):
                assert par[phase][key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{layout} {case} {phase} {key}"
    # Updated weights agree to within 1% of one learning-rate step: Adam moves each entry by about lr, and by
    # far less where a gradient is zero up to rounding (eps is 1e-3 here, see robust_optimisers), so a
    # rounding difference in the gradients moves a weight by a small fraction of lr, and a wrong gradient
    # (a missing reduction, a micro-batch counted twice, another sample's noise) by about lr.
    step_size = {"generator": PHASE2.optim_g.lr, "ema": PHASE2.optim_g.lr, "head": PHASE2.optim_d.lr,
                 "base": PHASE1.optim_fake.lr, "disc_backbone": PHASE2.optim_d.lr}
    for role, lr in step_size.items():
        if f"after.{role}" not in ref:
            continue
        a, b = ref[f"after.{role}"], par[f"after.{role}"]
        assert set(a) == set(b)
        for name in a:
            diff = (b[name].to(a[name].device) - a[name]).abs().max().item()
            assert diff <= 1e-2 * lr, f"{layout} {case} {role} {name}: differs by {diff:.3g} > 1% of lr {lr}"
        before = ref[f"init.{role}"] if role not in ("ema", "disc_backbone") else ref["init.generator"]
        assert any(not torch.equal(a[k], before[k]) for k in a), f"{role} did not change"


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
