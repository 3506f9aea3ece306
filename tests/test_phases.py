"""POSE phases on tiny models: the fake score starts equal to the real one and only its LoRA trains;
in Phase II the backbone changes only through the EMA, the head trains and the generator learns
through the discriminator."""

from __future__ import annotations

import pytest
import torch
from phase_fixtures import batch_for, phase1_setup, phase2_setup

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK
from pose_mcore.models.features import unused_by_features


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("_extra_state")}


def _changed(before, module):
    after = _snapshot(module)
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_fake_equals_real_at_init_and_only_lora_trains(tp1):
    roles, phase, cfg = phase1_setup()
    batch = batch_for(cfg)
    conds = phase.conditioner(batch)
    x = torch.randn(batch["latents"].shape).to(phase.device)
    t = torch.full((2,), 0.5, device=phase.device)
    with torch.no_grad():
        with roles.real() as real:
            v_real = phase.velocity(real, x, t, conds, conds.cond)
        with roles.fake() as fake:
            v_fake = phase.velocity(fake, x, t, conds, conds.cond)
    assert torch.equal(v_real, v_fake)
    base, gen = _snapshot(roles.base), _snapshot(roles.generator)
    phase.opt_fake.step(lambda b: phase.fake_loss(b, 0), [batch])
    changed = _changed(base, roles.base)
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B" in k for k in changed)  # B starts at zero and moves first
    assert not _changed(gen, roles.generator)
    assert all(p.requires_grad == (".lora_" in n) for n, p in roles.base.named_parameters())


def test_generator_step_changes_only_the_generator(tp1):
    roles, phase, cfg = phase1_setup()
    batch = batch_for(cfg)
    base, gen = _snapshot(roles.base), _snapshot(roles.generator)
    metrics = phase.step([batch])
    assert metrics["stepped"] == 1.0 and metrics["loss_dm"] > 0
    assert _changed(gen, roles.generator)
    assert all(".lora_" in k for k in _changed(base, roles.base))


@pytest.mark.parametrize("head", ["semantic", "conv"])
def test_phase2_roles(tp1, head):
    roles, _, cfg = phase1_setup()
    phase = phase2_setup(roles, cfg, head=head)
    batch = batch_for(cfg)
    ema, head_w, gen, base = (_snapshot(m) for m in (roles.ema, roles.head, roles.generator, roles.base))
    d = phase.opt_d.step(phase.discriminator_loss, [batch])
    assert not _changed(ema, roles.ema) and not _changed(gen, roles.generator)
    assert _changed(head_w, roles.head)
    assert d.stepped and d.metrics["r1"] > 0
    gen_before, head_before = _snapshot(roles.generator), _snapshot(roles.head)
    g = phase.opt_g.step(phase.generator_loss, [batch], frozen=phase.d_modules)
    assert g.stepped and g.grad_norm > 0  # the generator learns through D (T2V: no consistency)
    assert not _changed(head_before, roles.head)
    assert all(p.requires_grad for p in roles.head.parameters())  # trainable again after the generator step
    roles.update_ema(phase.cfg.ema_decay)
    gen_after = _snapshot(roles.generator)
    assert _changed(gen_before, roles.generator)
    ema_after = _snapshot(roles.ema)
    for k in ema:  # ema = decay * ema + (1 - decay) * generator, and nothing else moved it
        assert torch.allclose(ema_after[k], 0.9 * ema[k] + 0.1 * gen_after[k], atol=1e-6), k
    assert not _changed(base, roles.base)


def test_frozen_and_full_backbones(tp1):
    roles, _, cfg = phase1_setup()
    phase = phase2_setup(roles, cfg, backbone="frozen")
    base = _snapshot(roles.base)
    phase.step([batch_for(cfg)])
    assert not _changed(base, roles.base)
    roles, _, cfg = phase1_setup()
    phase = phase2_setup(roles, cfg, backbone="full")
    backbone = _snapshot(roles.disc_backbone)
    phase.opt_d.step(phase.discriminator_loss, [batch_for(cfg)])
    assert _changed(backbone, roles.disc_backbone)
    with pytest.raises(ValueError, match="backbone mode 'twin'"):
        phase2_setup(*phase1_setup()[::2], backbone="twin")


def test_consistency_loss_in_i2v(tp1):
    roles, _, cfg = phase1_setup("tiny-i2v")
    phase = phase2_setup(roles, cfg)
    batch = batch_for(cfg)
    out = phase.opt_g.step(phase.generator_loss, [batch], frozen=phase.d_modules)
    assert out.metrics["consistency"] > 0


def test_full_backbone_with_activation_checkpointing(tp1):
    """The generator step runs through a trained discriminator backbone that it must not train: its
    parameters stay frozen through backward too, so recomputed blocks save what the forward saved."""
    roles, _, cfg = phase1_setup(**RECOMPUTE_EVERY_BLOCK)
    phase = phase2_setup(roles, cfg, backbone="full")
    backbone = _snapshot(roles.disc_backbone)
    out = phase.step([batch_for(cfg)])
    assert out["stepped"] == 1.0 and _changed(backbone, roles.disc_backbone)
    # what the head cannot see (the output layers: its features are block outputs) is not trained at all
    unused = {id(p) for p in unused_by_features(roles.disc_backbone, phase.layers)}
    names = {n for n, p in roles.disc_backbone.named_parameters() if id(p) in unused}
    assert names and all(n.startswith(("norm_out", "proj_out", "scale_shift_table")) for n in names), names
    for n, p in roles.disc_backbone.named_parameters():
        assert p.requires_grad == (n not in names), n
        if n in names:
            assert torch.equal(p, backbone[n]), n


@pytest.mark.parametrize(("preset", "layers", "text_only_frozen"), [
    ("tiny-t2v", [0], False), ("tiny-hunyuan-t2v", [0, 1], True), ("tiny-hunyuan-t2v", [0, 2], False),
    ("tiny-hunyuan-t2v", None, False), ("tiny-hunyuan1.5-t2v", None, True), ("tiny-hunyuan1.5-i2v", [0], True)])
def test_every_trained_backbone_parameter_gets_a_gradient(tp1, preset, layers, text_only_frozen):
    """megatron-core's overlapped gradient reduction (DP or CP > 1) starts a bucket once every parameter in it
    has a gradient, and asserts so after the first step: a trained discriminator backbone must train only
    what its features depend on. HunyuanVideo with the last feature layer a dual-stream block (layers [0, 1]
    of 2 + 2 blocks; every HunyuanVideo-1.5 block is one) leaves that block's text-only parts without one."""
    roles, _, cfg = phase1_setup(preset)
    phase = phase2_setup(roles, cfg, backbone="full", feature_layers=layers)
    trained = [(n, p) for n, p in roles.disc_backbone.named_parameters() if p.requires_grad]
    loss, _ = phase.discriminator_loss(batch_for(cfg))
    grads = torch.autograd.grad(loss, [p for _, p in trained], allow_unused=True)
    assert [n for (n, _), g in zip(trained, grads, strict=True) if g is None] == []
    frozen = {n for n, p in roles.disc_backbone.named_parameters() if not p.requires_grad}
    assert any(".mlp_ctx." in n for n in frozen) == text_only_frozen, sorted(frozen)


@pytest.mark.parametrize("preset", ("tiny-hunyuan-i2v", "tiny-hunyuan-i2v-token-replace", "tiny-i2v"))
def test_generator_starts_as_the_pipelines(tp1, preset):
    """HunyuanVideo-I2V's generator input at t = 1 is 0.999 noise + 0.001 first-frame latent (diffusers'
    pipeline start), so the exported generator sees in diffusers what it trained on; Wan's is the noise."""
    roles, phase, cfg = phase1_setup(preset)
    batch = batch_for(cfg)
    conds = phase.conditioner(batch)
    noise = torch.randn_like(batch["latents"])
    seen = []
    roles.generator.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, : cfg.out_channels].clone()))
    with torch.no_grad():
        phase.generate(conds, noise)
    first = batch["first_frame"]
    if cfg.image_condition_type == "token_replace":  # the first frame is replaced by the clean latent
        want = torch.cat([first, (0.999 * noise + 0.001 * first)[:, :, 1:]], dim=2)
    else:
        want = 0.999 * noise + 0.001 * first if preset.startswith("tiny-hunyuan") else noise
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-6)
    assert not torch.equal(want, noise) or preset == "tiny-i2v"


def test_text_dropout_with_a_negative_prompt_of_another_length(tp1):
    """HunyuanVideo-I2V's negative prompt has another number of (image) tokens than the prompt: the teacher's
    text dropout pads the shorter with masked zeros, and each sample's velocity is its own unpadded one."""
    from conftest import assert_close_rel
    from devices import to_device

    from pose_mcore.models.registry import family_of_preset
    from pose_mcore.parallel.state import run_device
    from pose_mcore.pose.conditioning import Conditioner

    preset = "tiny-hunyuan-i2v-token-replace"
    family = family_of_preset(preset)
    cfg = family.make_config(preset)
    torch.manual_seed(0)
    model = family.build(cfg).to(run_device()).eval()
    gen = torch.Generator().manual_seed(1)
    batch = to_device({"latents": torch.randn(2, cfg.out_channels, 3, 4, 6, generator=gen),
                       "first_frame": torch.randn(2, cfg.out_channels, 1, 4, 6, generator=gen),
                       "text": torch.randn(2, 5, cfg.text_dim, generator=gen),
                       "text_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
                       "pooled": torch.randn(2, cfg.pooled_dim, generator=gen)})
    negative = to_device({"text": torch.randn(7, cfg.text_dim, generator=gen),
                          "text_mask": torch.tensor([1, 1, 1, 1, 1, 1, 0]),
                          "pooled": torch.randn(cfg.pooled_dim, generator=gen)})
    conds = Conditioner(cfg, negative)(batch)
    text, mask = "encoder_hidden_states", "encoder_attention_mask"
    assert conds.uncond[text].shape[1] == 7 and conds.cond[text].shape[1] == 5
    kwargs = conds.dropped(torch.tensor([True, False], device=run_device()))
    assert kwargs[text].shape[1] == 7 and kwargs[text][1, 5:].eq(0).all() and kwargs[mask][1, 3:].eq(0).all()
    assert torch.equal(kwargs[text][0], negative["text"]) and torch.equal(kwargs[text][1, :5], batch["text"][1])
    x, t = conds.inputs(batch["latents"]), torch.full((2,), 700.0, device=run_device())
    with torch.no_grad():
        mixed = model(x, t, **kwargs).sample
        alone = [model(x[i:i + 1], t[i:i + 1], **{k: v[i:i + 1] for k, v in kw.items()}).sample
                 for i, kw in ((0, conds.uncond), (1, conds.cond))]
    for i in range(2):
        assert_close_rel(mixed[i:i + 1], alone[i], 1e-5)


@pytest.mark.parametrize("preset", ["tiny-i2v", "tiny-hunyuan-t2v"])
def test_st_r1_on_the_features(tp1, preset):
    """``r1_on=features`` differences the trained backbone's features instead of the logit: the penalty trains
    the backbone and not the head (which it does not pass through), and a step takes it."""
    roles, _, cfg = phase1_setup(preset)
    phase = phase2_setup(roles, cfg, backbone="full", r1_on="features")
    batch = batch_for(cfg)
    loss, metrics = phase.discriminator_loss(batch)
    r1 = metrics["r1"]
    assert r1.item() > 0
    backbone = [p for p in roles.disc_backbone.parameters() if p.requires_grad]
    grads = torch.autograd.grad(r1, [*backbone, *roles.head.parameters()], allow_unused=True)
    n_backbone = len(backbone)
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:n_backbone])
    assert all(g is None or g.abs().sum() == 0 for g in grads[n_backbone:])
    out = phase.step([batch])
    assert out["stepped"] == 1.0 and out["r1"] > 0


@pytest.mark.parametrize("head", ["semantic", "conv"])
def test_head_hands_the_backbone_contiguous_gradients(tp1, head):
    """The features come as the backbone lays them out, ``[s, b, d]``, and the gradient the head sends back
    arrives in that layout, contiguous: a transposed one makes the backbone's linear backward copy (the
    semantic head's key/value projection read them transposed: under bf16 on the CPU, a copy of the weight per
    token)."""
    from pose_mcore.models.features import Features

    roles, _, cfg = phase1_setup()
    phase = phase2_setup(roles, cfg, head=head)
    s, b, d = 3 * 3 * 2, 2, cfg.hidden_size
    leaves = [torch.randn(s, b, d, requires_grad=True) for _ in phase.layers]
    hidden = [x * 1.0 for x in leaves]  # non-leaves: a hook sees the gradient as autograd hands it on
    strides = []
    for h in hidden:
        h.register_hook(lambda g: strides.append((g.is_contiguous(), tuple(g.shape))))
    feats = Features(phase.layers, hidden, (3, 3, 2))
    roles.head(feats, torch.full((b,), 0.8), torch.randn(b, 5, cfg.text_dim)).sum().backward()
    assert strides == [(True, (s, b, d))] * len(hidden)


def test_semantic_head_reads_only_the_valid_text(tp1):
    """A masked text's padding (HunyuanVideo's LLM tokens past the prompt) changes nothing the head computes;
    without the mask it would. The head computes only the queries' rows of its self-attention: the same as
    the whole self-attention's query rows."""
    from pose_mcore.models.features import Features

    roles, _, cfg = phase1_setup("tiny-hunyuan-t2v")
    phase = phase2_setup(roles, cfg)
    b, d = 2, cfg.hidden_size
    feats = Features(phase.layers, [torch.randn(18, b, d) for _ in phase.layers], (3, 3, 2))
    t, text = torch.full((b,), 0.8), torch.randn(b, 6, cfg.text_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    other = torch.where(mask.bool()[..., None], text, torch.randn_like(text))  # other padding
    head = roles.head
    with torch.no_grad():
        assert torch.equal(head(feats, t, text, None, mask), head(feats, t, other, None, mask))
        assert not torch.allclose(head(feats, t, text), head(feats, t, other))
        layer, queries = head.layers[0], head.queries.expand(b, -1, -1)
        tokens = layer.norm(torch.cat([queries, head.text_proj(text) + head.m_text], dim=1))
        whole = layer.self_attn(tokens, tokens, tokens, need_weights=False)[0][:, : queries.shape[1]]
        rows = layer.self_attn(tokens[:, : queries.shape[1]], tokens, tokens, need_weights=False)[0]
        assert torch.allclose(rows, whole, atol=1e-6)
