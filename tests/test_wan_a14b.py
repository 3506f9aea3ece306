"""Wan2.2-A14B's two experts (tiny random ones): the switch against diffusers' WanTransformer3DModel pair and
WanPipeline with ``transformer_2`` and ``boundary_ratio`` (the official code's rule is the same: ``t >= boundary``
is the high-noise expert's, pose_mcore/models/experts.py); POSE over the mixture: each sample's real and fake
score are its time's expert, the other expert's LoRA gets no gradient, one copy of each expert's weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from checkpoint_fixtures import checkpoint_tensors
from conftest import DEVICE, assert_close_rel
from phase_fixtures import PHASE1, batch_for, phase1_setup, phase2_setup
from wan_reference import diffusers_wan, wan_inputs

from pose_mcore.checkpoint.layouts.wan import wan_from_diffusers
from pose_mcore.config.wan import wan_config
from pose_mcore.diffusion.samplers import euler_sample, guided
from pose_mcore.models.experts import Experts, guidance_of
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict
from pose_mcore.pose.phase1 import Phase1

REL = 1e-5


def _pair():
    """Two different diffusers experts and pose_mcore's mixture of the same weights (boundary 0.875)."""
    high, low = diffusers_wan(seed=0).to(DEVICE), diffusers_wan(seed=5).to(DEVICE)
    model = family_of_preset("tiny-t2v-a14b").build(wan_config("tiny-t2v-a14b")).to(DEVICE)
    assert isinstance(model, Experts)
    load_full_state_dict(model.high, wan_from_diffusers(high.state_dict()))
    load_full_state_dict(model.low, wan_from_diffusers(low.state_dict()))
    return high, low, model


def test_each_sample_takes_its_expert_as_diffusers_does(tp1):
    high, low, model = _pair()
    inputs = {k: v.to(DEVICE) for k, v in wan_inputs(False, 4, 3, 4, 6, seed=3).items()}
    inputs["timestep"] = torch.tensor([999.0, 875.0, 874.9, 100.0], device=DEVICE)  # the boundary is high's
    with torch.no_grad():
        out = model(**inputs).sample
        ref_high, ref_low = high(**inputs).sample, low(**inputs).sample
    assert (ref_high - ref_low).abs().max() > 0.1  # the experts differ
    assert_close_rel(out[:2], ref_high[:2], REL, "high-noise samples")
    assert_close_rel(out[2:], ref_low[2:], REL, "low-noise samples")
    assert model.expert(0.875) is model.high and model.expert(0.8749) is model.low
    # a batch of one expert's samples gives the other no gradient
    inputs["timestep"] = torch.tensor([990.0, 950.0, 900.0, 880.0], device=DEVICE)
    model(**inputs).sample.square().mean().backward()
    assert all(p.grad is None for p in model.low.parameters())
    assert all(p.grad is not None for p in model.high.parameters() if p.requires_grad)


def test_sampling_with_the_switch_equals_wan_pipeline(tp1):
    """Euler with the expert switch and the two guidance scales (high 4.0, low 3.0) on the pipeline's own time
    grid equals ``WanPipeline(transformer=high, transformer_2=low, boundary_ratio=0.875)``, same noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    high, low, model = _pair()
    steps, shift = 6, 12.0
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=high, transformer_2=low,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), boundary_ratio=0.875)
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, 3, 4, 6, generator=gen).to(DEVICE)
    text, negative = torch.randn(1, 7, 32, generator=gen).to(DEVICE), torch.randn(1, 7, 32, generator=gen).to(DEVICE)
    used = {"high": 0, "low": 0}
    for name, expert in (("high", high), ("low", low)):
        expert.register_forward_hook(lambda *_, name=name: used.__setitem__(name, used[name] + 1))
    with torch.no_grad():
        ref = pipe(prompt_embeds=text, negative_prompt_embeds=negative, latents=noise.clone(), height=32, width=48,
                   num_frames=9, num_inference_steps=steps, guidance_scale=4.0, guidance_scale_2=3.0,
                   output_type="latent").frames
    assert used["high"] and used["low"], used  # the grid crosses the boundary
    sigmas = pipe.scheduler.sigmas

    def velocity(text_embeds):
        return lambda x, t: model(x, 1000 * t, encoder_hidden_states=text_embeds).sample

    with torch.no_grad():
        ours = euler_sample(guided(velocity(text), velocity(negative), guidance_of(model, 4.0, 3.0)), noise, steps,
                            times=sigmas)
    assert_close_rel(ours, ref, REL, "latents")
    with torch.no_grad():  # one guidance scale for both would be another video
        same = euler_sample(guided(velocity(text), velocity(negative), 4.0), noise, steps, times=sigmas)
    assert (same - ref).abs().max() > 1e-3 * ref.abs().max()


def _phase1(**settings):
    roles, phase, cfg = phase1_setup("tiny-t2v-a14b")
    phase.cfg = dataclasses.replace(PHASE1, **settings)
    return roles, phase, cfg


def test_phase1_scores_are_the_expert_of_each_samples_time(tp1):
    """The generator's distribution-matching loss with the samples of both experts differs from the same step with
    the boundary moved to send every sample to one expert; with every sample high it is the loss of a one-model
    teacher that is the high-noise expert (same weights)."""
    roles, phase, cfg = _phase1(real_guidance_low=1.5)
    batch = batch_for(cfg, size=4)
    t = phase.draws(batch, "generator")
    t.noise(batch["latents"])
    times = t.times(phase.cfg.t_min, phase.cfg.t_max, phase.cfg.shift)
    assert (times >= 0.875).any() and (times < 0.875).any(), times  # the batch takes both experts

    def loss(boundary: float) -> float:
        roles.base.config.boundary = boundary
        with torch.no_grad():
            return float(phase.generator_loss(batch)[0])

    mixed, all_high, all_low = loss(0.875), loss(0.01), loss(0.99)
    assert len({mixed, all_high, all_low}) == 3
    single, single_phase, _ = phase1_setup("tiny-t2v")  # the same architecture as one model
    load_full_state_dict(single.base, {k[len("high."):]: v for k, v in full_state_dict(roles.base).items()
                                       if k.startswith("high.")})
    load_full_state_dict(single.generator, full_state_dict(roles.generator))
    single_phase.cfg = dataclasses.replace(PHASE1, real_guidance_low=None)
    with torch.no_grad():
        expected = float(single_phase.generator_loss(batch)[0])
    assert all_high == pytest.approx(expected, rel=1e-6)


def test_the_other_experts_lora_gets_no_gradient(tp1):
    """Fake-score updates on samples of the high-noise expert only: its LoRA moves, the low-noise one's stays
    bitwise (its gradient is zero: Adam does not move it)."""
    roles, phase, cfg = _phase1(t_min=0.95, t_max=0.98, shift=1.0)
    lora = {e: {k: v.detach().clone() for k, v in getattr(roles.base, e).named_parameters() if "lora_" in k}
            for e in ("high", "low")}
    phase.step([batch_for(cfg, size=2)])
    for expert, before in lora.items():
        after = dict(getattr(roles.base, expert).named_parameters())
        moved = [k for k in before if not torch.equal(before[k], after[k])]
        assert moved if expert == "high" else not moved, (expert, moved)


def test_one_copy_of_each_experts_weights(tp1):
    """Phase I holds the two experts once (the frozen base, a LoRA each) and the generator; Phase II adds the EMA
    and the head, and its frozen backbone is the base's high-noise expert, not a copy."""
    roles, phase, cfg = _phase1()
    expert = sum(p.numel() for p in roles.generator.parameters())

    def storages(modules) -> int:
        seen = {}
        for m in modules:
            for p in m.parameters():
                seen[p.untyped_storage().data_ptr()] = p.numel()
        return sum(seen.values())

    lora = sum(p.numel() for n, p in roles.base.named_parameters() if "lora_" in n)
    assert storages(roles.named_roles().values()) == 3 * expert + lora
    phase2_setup(roles, cfg, backbone="frozen")
    head = sum(p.numel() for p in roles.head.parameters())
    assert storages(roles.named_roles().values()) == 3 * expert + lora + head
    with roles.backbone() as backbone:
        assert backbone is roles.base.high
    assert isinstance(phase, Phase1)


@pytest.mark.parametrize("start", ["high", "low"])
def test_the_generator_starts_from_the_chosen_expert(tp1, start):
    from pose_mcore.pose.roles import Roles

    teacher = family_of_preset("tiny-t2v-a14b").build(wan_config("tiny-t2v-a14b")).to(DEVICE)
    roles = Roles(teacher, lora_rank=4, lora_alpha=4, generator_init=start)
    assert roles.generator.config.boundary is None  # one model: what the exports write
    expected = getattr(teacher, start).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in roles.generator.state_dict().items()
               if isinstance(v, torch.Tensor))


def test_a_trained_mixture_is_saved_and_loaded_as_one_checkpoint(tp1, tmp_path):
    """The teacher phase's result (both experts) is one pose_mcore checkpoint whose config has the boundary; it
    loads back as the same two experts."""
    from pose_mcore.checkpoint.load import load_model
    from pose_mcore.training.checkpointing import export_pose_checkpoint

    _, _, model = _pair()
    export_pose_checkpoint(model, tmp_path / "teacher")
    loaded = load_model(tmp_path / "teacher")
    assert isinstance(loaded, Experts) and loaded.config.boundary == 0.875
    state = model.state_dict()
    assert {k: v for k, v in loaded.state_dict().items() if not k.endswith("_extra_state")}.keys() == \
        {k for k in state if not k.endswith("_extra_state")}
    assert all(torch.equal(v.cpu(), state[k].cpu()) for k, v in loaded.state_dict().items()
               if not k.endswith("_extra_state"))


# --- pose-convert: both layouts of a two-expert model -------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny mixture as a pose_mcore checkpoint, exported to the diffusers pipeline folder (saved by diffusers'
    own WanPipeline.save_pretrained from the exported experts: model_index.json with the boundary_ratio) and to the
    official folders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from pose_mcore.checkpoint.command import main
    from pose_mcore.parallel.state import initialize_parallel
    from pose_mcore.training.checkpointing import export_pose_checkpoint

    initialize_parallel(1)
    root = tmp_path_factory.mktemp("a14b")
    high, low, model = _pair()
    export_pose_checkpoint(model, root / "pose")
    assert main(["export", "--src", str(root / "pose"), "--dst", str(root / "experts"), "--layout",
                 "wan-diffusers"]) == 0
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=FlowMatchEulerDiscreteScheduler(),
                       transformer=WanTransformer3DModel.from_pretrained(root / "experts" / "transformer"),
                       transformer_2=WanTransformer3DModel.from_pretrained(root / "experts" / "transformer_2"),
                       boundary_ratio=0.875)
    pipe.save_pretrained(root / "diffusers")
    assert main(["export", "--src", str(root / "pose"), "--dst", str(root / "official"), "--layout", "wan"]) == 0
    return root, (high, low, model)


def test_exported_experts_are_the_diffusers_experts(tp1, exported):
    root, (high, low, _) = exported
    from diffusers import WanTransformer3DModel

    inputs = {k: v.to(DEVICE) for k, v in wan_inputs(False, 2, 3, 4, 6, seed=4).items()}
    for sub, ref in (("transformer", high), ("transformer_2", low)):
        loaded = WanTransformer3DModel.from_pretrained(root / "diffusers" / sub).to(DEVICE)
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).sample, ref(**inputs).sample), sub
    assert {p.name for p in (root / "official").iterdir()} == {"high_noise_model", "low_noise_model"}


@pytest.mark.parametrize("layout", ["diffusers", "official"])
def test_import_of_both_layouts_round_trips_bit_exact(tp1, exported, tmp_path, capsys, layout):
    from pose_mcore.checkpoint.command import main
    from pose_mcore.checkpoint.load import load_model

    root, (_, _, model) = exported
    assert main(["import", "--src", str(root / layout), "--dst", str(tmp_path / "pose")]) == 0
    out = capsys.readouterr().out
    assert "wan2.2-t2v-a14b" not in out and "tiny-t2v-a14b" in out  # the tiny preset's architecture
    assert ("model_index.json's boundary_ratio" if layout == "diffusers" else "preset tiny-t2v-a14b") in out
    original, again = checkpoint_tensors(root / "pose"), checkpoint_tensors(tmp_path / "pose")
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    assert load_model(tmp_path / "pose").config.boundary == 0.875
    assert main(["inspect", str(root / layout)]) == 0
    assert "high noise (t >= 0.875), low noise (t < 0.875)" in capsys.readouterr().out


def test_both_experts_load_at_tp2(exported, tmp_path):
    from conftest import torchrun

    root, (_, _, model) = exported
    inputs = wan_inputs(False, 4, 3, 4, 6, seed=6)
    inputs["timestep"] = torch.tensor([990.0, 875.0, 500.0, 20.0])  # both experts
    torch.save({"a14b": (str(root / "pose"), inputs)}, tmp_path / "cases.pt")
    torchrun("load_tp.py", "--cases", str(tmp_path / "cases.pt"), "--out", str(tmp_path / "out.pt"))
    results = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = model.cpu()(**inputs).sample
    for sp in (0, 1):
        assert_close_rel(results[f"a14b/sp{sp}"].cpu(), expected, REL, f"TP=2 sp={sp}")


def _refused(args, capsys, match: str, dst) -> None:
    from pose_mcore.checkpoint.command import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pose-convert: error: ") and match in err and err.count("\n") == 1, err
    assert not dst.exists() and not [p for p in dst.parent.iterdir() if ".tmp-" in p.name]


def test_one_expert_where_two_are_needed_and_the_reverse_are_refused(tp1, exported, tmp_path, capsys):
    import json
    import shutil

    root, _ = exported
    dst = tmp_path / "out"
    _refused(["import", "--src", str(root / "diffusers" / "transformer"), "--dst", str(dst), "--set",
              "boundary=0.875"], capsys, "is for a two-expert model", dst)
    _refused(["export", "--src", str(root / "pose"), "--dst", str(tmp_path / "x.safetensors"), "--layout", "wan",
              "--dtype", "fp8"], capsys, "two-expert checkpoint is written as a folder", tmp_path / "x.safetensors")
    shutil.copytree(root / "diffusers", tmp_path / "no_ratio")
    index = tmp_path / "no_ratio" / "model_index.json"
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items() if k != "boundary_ratio"}))
    _refused(["import", "--src", str(tmp_path / "no_ratio"), "--dst", str(dst)], capsys, "no boundary_ratio", dst)


@pytest.mark.parametrize("preset, checkpoint, message", [
    ("tiny-t2v", "pose", "holds two experts but the preset 'tiny-t2v' is one model"),
    ("tiny-t2v-a14b", "one", "holds one model but the preset 'tiny-t2v-a14b' is two experts")])
def test_a_teacher_with_the_wrong_number_of_experts_is_refused(tp1, exported, tmp_path, capsys, preset, checkpoint,
                                                               message):
    from pose_mcore.cli import main as train
    from pose_mcore.training.checkpointing import export_pose_checkpoint

    root, (_, _, model) = exported
    if checkpoint == "one":
        export_pose_checkpoint(model.high, root / "one") if not (root / "one").exists() else None
    rc = train([f"preset={preset}", f"teacher_checkpoint={root / checkpoint}", "phases=[phase1]", "phase1.steps=1",
                "micro_batch_size=2", "data.frames=3", "data.height=8", "data.width=8",
                f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("keys", ["diffusers", "official"])
def test_a_lora_against_the_high_noise_expert_loads_in_the_a14b_pipeline(tp1, exported, tmp_path, keys, capsys):
    """A generator started from the high-noise expert, exported as a full-rank LoRA against the two-expert teacher
    (``--expert high``, the default): diffusers' ``WanPipeline.load_lora_weights`` on the A14B folder puts it on
    ``transformer`` and the pipeline's transformer is then the generator."""
    from diffusers import WanPipeline
    from safetensors import safe_open

    from pose_mcore.checkpoint.command import main
    from pose_mcore.models.registry import clone_model
    from pose_mcore.pose.roles import lora_carried
    from pose_mcore.training.checkpointing import export_pose_checkpoint

    root, (_, _, model) = exported
    generator = clone_model(model.high.cpu())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in lora_carried(generator):
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    export_pose_checkpoint(generator, tmp_path / "generator")
    lora = tmp_path / "lora.safetensors"
    assert main(["export", "--layout", "lora", "--src", str(tmp_path / "generator"), "--base", str(root / "pose"),
                 "--dst", str(lora), "--rank", "full", "--lora-keys", keys]) == 0
    assert "so the teacher with this LoRA is the generator" in capsys.readouterr().out
    with safe_open(lora, "pt") as f:
        assert f.metadata()["pose_mcore.base_model"] == "tiny-t2v-a14b (pose, high-noise expert)"
    pipe = WanPipeline.from_pretrained(root / "diffusers", vae=None, text_encoder=None, tokenizer=None)
    pipe.load_lora_weights(str(tmp_path), weight_name=lora.name)
    inputs = wan_inputs(False, 2, 3, 4, 6, seed=8)
    with torch.no_grad():
        out, want, teacher = pipe.transformer(**inputs).sample, generator(**inputs).sample, model.high(**inputs).sample
    assert (want - teacher).abs().max() > 1e-2 * want.abs().max()  # the generator is not its teacher
    assert_close_rel(out, want, 1e-4)
    # against the low-noise expert the same generator is another LoRA
    other = tmp_path / "low.safetensors"
    assert main(["export", "--layout", "lora", "--src", str(tmp_path / "generator"), "--base", str(root / "pose"),
                 "--dst", str(other), "--rank", "full", "--lora-keys", keys, "--expert", "low"]) == 0
    with safe_open(lora, "pt") as a, safe_open(other, "pt") as b:
        assert any(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_the_teacher_phase_trains_each_expert_on_its_own_times(tp1):
    """The toy teacher of two experts (the CPU proof's): a step whose samples are all high-noise ones moves the
    high-noise expert and leaves the low-noise one bitwise as it was."""
    from pose_mcore.config.train import OptimConfig, TeacherConfig
    from pose_mcore.parallel.state import run_device
    from pose_mcore.pose.conditioning import Conditioner
    from pose_mcore.pose.roles import Roles
    from pose_mcore.pose.teacher import TeacherPhase

    cfg = wan_config("tiny-t2v-a14b")
    roles = Roles(family_of_preset("tiny-t2v-a14b").build(cfg).to(DEVICE), with_base=False)
    assert isinstance(roles.generator, Experts)  # the teacher phase trains both experts
    phase = TeacherPhase(roles, Conditioner(cfg, stand_ins=True), TeacherConfig(optim=OptimConfig(lr=1e-3), shift=1e4),
                         seed=2, device=run_device())  # t shifted to within 1e-3 of 1: every sample is high
    before = {e: [p.detach().clone() for p in getattr(roles.generator, e).parameters()] for e in ("high", "low")}
    assert phase.step([batch_for(cfg, size=2)])["stepped"] == 1.0
    for expert, old in before.items():
        same = all(torch.equal(a, b) for a, b in zip(old, getattr(roles.generator, expert).parameters(), strict=True))
        assert same == (expert == "low"), expert


def test_i2v_sampling_with_the_switch_equals_the_i2v_pipeline(tp1, model_folders):
    """Wan2.2-I2V-A14B: the teacher's Euler with the switch at 0.9 and guidance 3.5 (high) / 2.0 (low), from the
    folder's encoders (text, negative prompt, condition channels), equals WanImageToVideoPipeline with
    transformer_2 and boundary_ratio on its own time grid, same noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from encoder_fixtures import pipeline
    from PIL import Image

    from pose_mcore.encoders import ModelEncoders
    from pose_mcore.pose.conditioning import Conditioner

    high, low = (diffusers_wan(True, seed=s, clip=False).to(DEVICE) for s in (0, 5))
    model = family_of_preset("tiny-i2v-a14b").build(wan_config("tiny-i2v-a14b")).to(DEVICE)
    load_full_state_dict(model.high, wan_from_diffusers(high.state_dict()))
    load_full_state_dict(model.low, wan_from_diffusers(low.state_dict()))
    steps, shift, frames, height, width = 6, 5.0, 5, 32, 48
    pipe = pipeline("wan-a14b-i2v", high, transformer_2=low)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray((torch.rand(40, 36, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy())
    noise = torch.randn(1, 4, 2, 4, 6, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    prompt, negative = "a red square moving left", "blurry static"
    with torch.no_grad():
        ref = pipe(image=image, prompt=prompt, negative_prompt=negative, height=height, width=width, num_frames=frames,
                   num_inference_steps=steps, guidance_scale=3.5, guidance_scale_2=2.0, max_sequence_length=12,
                   latents=noise.clone(), output_type="latent").frames
    enc = ModelEncoders(model_folders["wan-a14b-i2v"], max_sequence_length=12)
    batch = {"latents": noise, **enc.encode_prompts([prompt]), **enc.encode_first_frame(image, frames, height, width)}
    conds = Conditioner(model.config, enc.encode_negative(negative, height, width))(batch)

    def velocity(fields):
        return lambda x, t: model(conds.inputs(x), conds.timestep(t, x), **fields).sample

    with torch.no_grad():
        ours = euler_sample(guided(velocity(conds.cond), velocity(conds.uncond), guidance_of(model, 3.5, 2.0)), noise,
                            steps, times=pipe.scheduler.sigmas)
    assert_close_rel(ours, ref, REL, "latents")


def test_the_memory_tool_traces_two_experts_at_any_micro_batch(tmp_path):
    """tools/memory_model.py on a two-expert config with micro-batches of 2: a trace has no times to split a batch
    by (a fake boolean mask has no size), so the whole micro-batch takes one expert; the base holds both."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, str(root / "tools" / "memory_model.py"), "--config", "tiny-cpu", "--video",
                           "5x16x16", "--phase", "phase1", "--json", str(out), "preset=tiny-t2v-a14b",
                           "micro_batch_size=2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["phase1"]["step"] > 0
    states = next(line for line in proc.stdout.splitlines() if line.strip().startswith("states:"))
    assert "base" in states and "grads fake" in states
