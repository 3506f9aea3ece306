"""Every phase step runs as training on a GPU does: bf16 weights for the generator and the frozen base
(its LoRA included), fp32 main weights in the optimiser, an fp32 EMA and head, bf16 autocast; the dtypes
meet (heads, kernels, losses in fp32) and the updates are finite. On a machine without CUDA
the step runs under CPU autocast, with megatron-core's linear backward made to re-enter autocast as its
``custom_bwd`` does on CUDA (megatron-core supports autocast on CUDA only; pose-train refuses
precision=bf16 on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from phase_fixtures import batch_for, phase1_setup, phase2_setup

from pose_mcore.checkpoint.sharded import ShardedReader
from pose_mcore.parallel.cpu_compat import cpu_autocast_backward
from pose_mcore.training.checkpointing import load_checkpoint, save_checkpoint


@pytest.fixture
def autocast_backward():
    with cpu_autocast_backward():
        yield


@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v"])
@pytest.mark.parametrize("head", ["semantic", "conv"])
def test_phase_steps_under_bf16_autocast(tp1, autocast_backward, preset, head):
    roles, phase1, cfg = phase1_setup(preset, dtype=torch.bfloat16)
    phase1.bf16 = True
    batch = batch_for(cfg)
    generator = {k: v.detach().clone() for k, v in roles.generator.named_parameters()}
    out1 = phase1.step([batch])
    phase2 = phase2_setup(roles, cfg, head=head)
    # Phase II's generator optimiser continues from Phase I's fp32 main weights, not their bf16 rounding
    assert all(a.main is b.main for a, b in zip(phase1.opt_g.params, phase2.opt_g.params, strict=True))
    phase2.bf16 = True
    out2 = phase2.step([batch])
    for name, value in {**out1, **out2}.items():
        assert math.isfinite(value), name
    assert out1["stepped"] == out2["stepped"] == 1.0
    assert all(p.dtype == torch.bfloat16 for p in [*roles.generator.parameters(), *roles.base.parameters()])
    assert all(p.dtype == torch.float32 for p in [*roles.ema.parameters(), *roles.head.parameters()])
    for optimizer in (phase1.opt_fake, phase2.opt_g):  # fp32 main weights beside the bf16 ones
        assert all(p.main.dtype == torch.float32 and p.main is not p.model for p in optimizer.params)
        assert all(torch.equal(p.main.to(p.model.dtype), p.model) for p in optimizer.params)
    after = dict(roles.generator.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in generator.items())


def test_fp32_ema_of_a_bf16_generator_keeps_small_decays(tp1):
    """decay 0.995 over 1000 steps: each update moves the EMA by 0.005 of its distance to the generator, far
    below bf16's resolution near 1 (2**-7); the fp32 EMA follows the exact recurrence, a bf16 one would not move."""
    roles, _, _ = phase1_setup(dtype=torch.bfloat16)
    roles.attach_discriminator(torch.nn.Linear(1, 1), "ema")
    with torch.no_grad():
        for p in roles.ema.parameters():
            p.fill_(1.0)
        for p in roles.generator.parameters():
            p.fill_(1.0 + 2**-6)  # exact in bf16
    for _ in range(1000):
        roles.update_ema(0.995)
    want = 1.0 + 2**-6 * (1 - 0.995**1000)
    for p in roles.ema.parameters():
        assert p.dtype == torch.float32
        assert (p - want).abs().max().item() < 1e-5
    bf16_ema = torch.ones(1, dtype=torch.bfloat16)
    bf16_ema.lerp_(torch.full((1,), 1.0 + 2**-6, dtype=torch.bfloat16), 0.005)
    assert bf16_ema.item() == 1.0  # what a bf16 EMA would do: nothing


def test_resume_continues_from_the_fp32_main_weights(tp1, autocast_backward, tmp_path):
    """A phase restored from a checkpoint of its roles' (bf16) weights and its state takes the same next step
    as the one that kept running: the checkpoint carries the fp32 main weights, not their bf16 rounding."""
    def setup():
        roles, phase, cfg = phase1_setup(dtype=torch.bfloat16)
        phase.bf16 = True
        return roles, phase, batch_for(cfg)

    roles, phase, batch = setup()
    phase.step([batch])
    ckpt = save_checkpoint(tmp_path, {"global_step": 1, "phase_state": phase.state_dict()}, roles.named_roles(),
                           phase.pieces())
    assert any(k.endswith("/main") for k in ShardedReader(ckpt).keys("optimizer/"))
    resumed_roles, resumed, _ = setup()
    meta, reader = load_checkpoint(ckpt, resumed_roles.named_roles())
    resumed.load_state_dict(meta["phase_state"], reader)
    phase.step([batch])
    resumed.step([batch])
    for (name, a), b in zip(roles.named_parameters(), resumed_roles.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("precision", "device", "weights_bf16", "autocast"), [
    ("auto", "cuda", True, True), ("auto", "cpu", False, False), ("bf16", "cuda", True, True),
    ("amp", "cuda", False, True), ("fp32", "cuda", False, False)])
def test_precision_policies(tp1, precision, device, weights_bf16, autocast):
    """``precision``: bf16 weights and autocast, or (amp) fp32 weights under autocast; build_phase follows."""
    from pose_mcore.config.train import TrainConfig
    from pose_mcore.models.registry import family_of_preset
    from pose_mcore.pose.build import build_phase
    from pose_mcore.pose.conditioning import Conditioner

    config = TrainConfig(preset="tiny-t2v", precision=precision)
    assert (config.bf16(device), config.autocast(device)) == (weights_bf16, autocast)
    family = family_of_preset(config.preset)
    model_cfg = family.make_config(config.preset)
    roles, phase = build_phase("phase1", config, family.build(model_cfg), Conditioner(model_cfg, stand_ins=True),
                               torch.device("cpu"), bf16=config.bf16(device), autocast=config.autocast(device))
    assert phase.bf16 is autocast
    assert {p.dtype for p in roles.generator.parameters()} == {torch.bfloat16 if weights_bf16 else torch.float32}
