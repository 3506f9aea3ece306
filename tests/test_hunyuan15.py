"""HunyuanVideo-1.5 as a POSE teacher: the real score's guidance is the pipelines' classifier-free guidance (their
guider, scale 6 for the released T2V / I2V models; the step-distilled ones run at 1, no negative pass), so the
teacher's Euler from the folder's encoders equals HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline;
shipped configs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_rel
from encoder_fixtures import TINY_PRESET
from test_encoders import FRAMES, GLYPH_PROMPT, NEGATIVE, encoders, first_frame, run_pipeline, size, transformer

from pose_mcore.checkpoint.layouts.hunyuan15 import hunyuan15_from_diffusers
from pose_mcore.diffusion.flow import model_timestep
from pose_mcore.diffusion.samplers import euler_sample, guided
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.sharding import load_full_state_dict
from pose_mcore.pose.conditioning import Conditioner


@pytest.mark.parametrize("kind", ["hunyuan15-t2v", "hunyuan15-i2v"])
def test_teacher_with_guidance_equals_the_pipeline(tp1, model_folders, kind):
    """Three Euler steps with guidance 6 on the pipeline's own sigmas (its scheduler's shift 5): our DiT with
    the conditioner's conditional and negative inputs equals the pipeline's latents; at scale 1 the result
    differs (the guidance is used)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = transformer(kind)
    _, want = run_pipeline(kind, reference, guidance=6.0, seed=3, steps=3)
    cfg = family_of_preset(TINY_PRESET[kind]).make_config(TINY_PRESET[kind])
    model = family_of_preset(TINY_PRESET[kind]).build(cfg).eval()
    load_full_state_dict(model, hunyuan15_from_diffusers(reference.state_dict()))
    enc = encoders(model_folders[kind], kind)
    negative = enc.encode_negative(NEGATIVE, *size(kind))
    batch = {"latents": torch.zeros_like(want), **enc.encode_prompts([GLYPH_PROMPT])}
    if kind.endswith("i2v"):
        batch.update(enc.encode_first_frame(first_frame(kind=kind), FRAMES, *size(kind)))
    conds = Conditioner(cfg, negative)(batch)

    def velocity(kwargs):
        return lambda x, t: model(conds.inputs(x), model_timestep(t), **kwargs).sample

    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, 4)[:-1].tolist())
    noise = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = euler_sample(guided(velocity(conds.cond), velocity(conds.uncond), 6.0), noise, 3,
                            times=scheduler.sigmas)
        unguided = euler_sample(velocity(conds.cond), noise, 3, times=scheduler.sigmas)
    assert_close_rel(ours, want, 1e-5)
    assert (unguided - want).abs().max() > 1e-2 * want.abs().max()


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_trained_roles_hold_only_what_gets_a_gradient(tp1, variant):
    """Megatron's DDP asserts from its second step that every parameter of a bucket got a gradient. The last
    block's text-only parts (its text stream is dropped) and T2V's image projection (its image tokens are zeros,
    left out) cannot change the output: the generator and the fake score's LoRA leave them out, everything else
    gets a gradient."""
    from hunyuan15_reference import hunyuan15_inputs

    from pose_mcore.models.features import unused_by_output
    from pose_mcore.pose.roles import Roles

    preset = f"tiny-hunyuan1.5-{variant}"
    family = family_of_preset(preset)
    roles = Roles(family.build(family.make_config(preset)), lora_rank=2, lora_alpha=2)
    inputs = hunyuan15_inputs(variant, 1, 2, 2, 2, [3], [2])
    with roles.fake() as fake:
        (roles.generator(**inputs).sample.sum() + fake(**inputs).sample.sum()).backward()
    dead = {id(p) for p in unused_by_output(roles.generator)}
    assert len(dead) > 0 and all(not p.requires_grad for p in unused_by_output(roles.generator))
    assert ({n for n, p in roles.generator.named_parameters() if id(p) in dead} >
            {"double_blocks.1.mlp_ctx.linear_fc1.weight"} | ({"image_embedder.ff.linear_1.weight"} if variant == "t2v"
                                                            else set()))
    for role in (roles.generator, roles.base):
        trained = [(n, p) for n, p in role.named_parameters() if p.requires_grad]
        assert trained and [n for n, p in trained if p.grad is None] == []
    assert any(".lora_" in n and not p.requires_grad for n, p in roles.base.named_parameters())  # the last block's


def test_two_data_parallel_steps_with_overlapped_reduction(tmp_path):
    """The memory tool traces the trainer's second step of Phase I at DP=2 with megatron's overlapped reduction:
    it ran into DDP's every-parameter assertion before the dead parameters were left out."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "memory_model.py"
    proc = subprocess.run([sys.executable, str(tool), "--config", "tiny-cpu", "--video", "9x64x64", "--world", "2",
                           "preset=tiny-hunyuan1.5-t2v", "tensor_parallel=1", "--phase", "phase1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "phase1" in proc.stdout, proc.stderr[-3000:]
