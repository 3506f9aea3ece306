"""The model folder's encoders (pose_mcore.encoders): every prepared field equals what the diffusers pipeline
feeds its transformer for the same inputs, captured from the pipeline's own call; pose-sample's one step
equals the pipeline's one-step output with the same generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from encoder_fixtures import HUNYUAN_I2V_TEMPLATE, HUNYUAN_TEMPLATE, KINDS, TINY_PRESET, pipeline
from hunyuan15_reference import diffusers_hunyuan15
from hunyuan_reference import diffusers_hunyuan
from PIL import Image
from wan_reference import diffusers_wan

from pose_mcore.encoders import EncoderError, ModelEncoders

PROMPT, NEGATIVE = "a red square moving left", "blurry static low quality"
FRAMES, HEIGHT, WIDTH = 5, 32, 48
TEXT_LEN = {"wan-t2v": 12, "wan-i2v": 512, "wan-ti2v": 12, "wan-a14b-t2v": 12, "wan-a14b-i2v": 12, "hunyuan-t2v": 10,
            "hunyuan-i2v": 10, "hunyuan-i2v-replace": 10, "hunyuan15-t2v": 24, "hunyuan15-i2v": 24}
"""Text tokens: diffusers' Wan I2V attention takes the last 512 context tokens as text."""


def size(kind: str) -> tuple[int, int]:
    """Pixels of the test videos: Wan2.2's VAE downsamples 16x (latents 4 x 6 either way); HunyuanVideo-1.5 I2V's
    pipeline takes the size of the tiny model's 32-pixel bucket of the image's aspect: square."""
    return {"wan-ti2v": (2 * HEIGHT, 2 * WIDTH), "hunyuan15-i2v": (HEIGHT, HEIGHT)}.get(kind, (HEIGHT, WIDTH))


TEMPLATES = {"hunyuan-t2v": HUNYUAN_TEMPLATE, "hunyuan-i2v": HUNYUAN_I2V_TEMPLATE,
             "hunyuan-i2v-replace": HUNYUAN_I2V_TEMPLATE}


def encoders(folder, kind: str) -> ModelEncoders:
    return ModelEncoders(folder, max_sequence_length=TEXT_LEN[kind], prompt_template=TEMPLATES.get(kind))


def transformer(kind: str):
    if kind.startswith("hunyuan15"):
        return diffusers_hunyuan15(kind.removeprefix("hunyuan15-"), seed=5)
    if kind.startswith("hunyuan"):
        return diffusers_hunyuan({"hunyuan-t2v": "t2v", "hunyuan-i2v": "i2v_concat",
                                  "hunyuan-i2v-replace": "i2v_replace"}[kind], seed=5)
    return diffusers_wan(kind in ("wan-i2v", "wan-a14b-i2v"), seed=5, clip=kind == "wan-i2v")


TEXT_TO_VIDEO = ("wan-t2v", "wan-a14b-t2v", "hunyuan-t2v", "hunyuan15-t2v")
GLYPH_PROMPT = 'a red square moving left "POSE"'
"""HunyuanVideo-1.5's prompt: its quoted text goes to the glyph encoder (ByT5)."""


def first_frame(seed: int = 0, kind: str = "wan-i2v", pixels: tuple[int, int] | None = None) -> Image.Image:
    """A random RGB image of ``pixels`` (height, width; default the video's size)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*(pixels or size(kind)), 3), dtype=np.uint8))


PHOTO = (45, 38)
"""An image of another size and aspect than the videos (taller than wide, odd sizes)."""


def run_pipeline(kind: str, model, guidance: float, seed: int = 0, output_type: str = "latent",
                 image: Image.Image | None = None, steps: int = 1) -> tuple[list[dict], torch.Tensor]:
    """The transformer's keyword inputs of every call of a pipeline run of ``steps`` steps (one by default), and its
    output (latents, or float frames ``[B, F, H, W, 3]`` for ``output_type="np"``); ``image``: the first frame
    (default :func:`first_frame`)."""
    pipe = pipeline(kind, model)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
    kwargs = dict(prompt=PROMPT, height=size(kind)[0], width=size(kind)[1], num_frames=FRAMES,
                  num_inference_steps=steps, max_sequence_length=TEXT_LEN[kind], output_type=output_type, generator=torch.Generator().manual_seed(seed))
    if kind.startswith("hunyuan15"):  # the guider holds the scale; the length is the pipeline's attribute
        from diffusers import ClassifierFreeGuidance

        pipe.register_modules(guider=ClassifierFreeGuidance(guidance_scale=guidance))
        pipe.tokenizer_max_length = kwargs.pop("max_sequence_length")
        kwargs.update(prompt=GLYPH_PROMPT, negative_prompt=NEGATIVE)
        if kind == "hunyuan15-i2v":  # the pipeline picks the size from the image's aspect
            del kwargs["height"], kwargs["width"]
    elif kind.startswith("hunyuan"):
        kwargs.update(prompt_template=TEMPLATES[kind], guidance_scale=1.0)
        if guidance > 1:
            kwargs.update(negative_prompt=NEGATIVE, true_cfg_scale=guidance)
    else:
        kwargs.update(negative_prompt=NEGATIVE, guidance_scale=guidance)
    if kind not in TEXT_TO_VIDEO:
        kwargs["image"] = image or first_frame(kind=kind)
    with torch.no_grad():
        out = pipe(**kwargs).frames
    return calls, out


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("hunyuan15")])
def test_prepared_fields_equal_the_pipelines_inputs(model_folders, kind):
    enc = encoders(model_folders[kind], kind)
    calls, _ = run_pipeline(kind, transformer(kind), guidance=2.0)
    assert len(calls) == 2  # conditional, then unconditional (the negative prompt)
    cond, uncond = calls
    hunyuan_i2v = kind.startswith("hunyuan-i2v")
    image = first_frame(kind=kind) if hunyuan_i2v else None  # its LLaVA reads the image with the prompt
    fields = enc.encode_prompts([PROMPT], image)
    negative = {k: v[None] for k, v in enc.encode_negative(NEGATIVE, HEIGHT, WIDTH).items()}
    assert torch.equal(fields["text"], cond["encoder_hidden_states"])
    assert torch.equal(negative["text"], uncond["encoder_hidden_states"])
    assert not torch.equal(fields["text"], negative["text"])
    if hunyuan_i2v:
        first = enc.encode_first_frame(image, FRAMES, HEIGHT, WIDTH)
        if kind == "hunyuan-i2v":  # latent concat: [first-frame latent, zeros | first-frame mask] channels
            assert torch.equal(first["condition"], cond["hidden_states"][:, enc.latent_channels:])
            assert first["condition"][:, -1, 0].eq(1).all() and first["condition"][:, :, 1:].eq(0).all()
        else:  # token replace: the clean first-frame latent replaces the noisy one
            assert set(first) == {"first_frame"} and cond["hidden_states"].shape[1] == enc.latent_channels
            assert torch.equal(first["first_frame"], cond["hidden_states"][:, :, :1])
        assert not torch.equal(fields["text"], enc.encode_prompts([PROMPT], first_frame(1))["text"])  # image-dependent
        from pose_mcore.models.registry import family_of_preset
        from pose_mcore.pose.conditioning import Conditioner

        batch = {"latents": cond["hidden_states"][:, :4], **fields, **first}
        conds = Conditioner(family_of_preset(TINY_PRESET[kind]).make_config(TINY_PRESET[kind]),
                            {k: v[0] for k, v in negative.items()})(batch)
        assert torch.equal(conds.inputs(cond["hidden_states"][:, :4]), cond["hidden_states"])
        noise = torch.randn(cond["hidden_states"][:, :4].shape, generator=torch.Generator().manual_seed(0))
        start = conds.start(noise)  # 0.999 noise + 0.001 image latent; token replace: its first frame replaced
        assert torch.equal(conds.inputs(start)[:, :4], cond["hidden_states"][:, :4])
        for name, want in (("cond", cond), ("uncond", uncond)):
            for key, value in getattr(conds, name).items():
                assert torch.equal(value.to(want[key].dtype), want[key]), (name, key)
    if kind.startswith("hunyuan"):
        assert torch.equal(fields["text_mask"].float(), cond["encoder_attention_mask"])
        assert torch.equal(negative["text_mask"].float(), uncond["encoder_attention_mask"])
        assert torch.equal(fields["pooled"], cond["pooled_projections"])
        assert torch.equal(negative["pooled"], uncond["pooled_projections"])
        assert 0 < fields["text_mask"].sum() < fields["text_mask"].shape[-1]  # padding is masked
    if kind in ("wan-i2v", "wan-a14b-i2v"):
        image = enc.encode_first_frame(first_frame(), FRAMES, HEIGHT, WIDTH)
        if kind == "wan-i2v":
            assert torch.equal(image["image_states"], cond["encoder_hidden_states_image"])
        else:  # Wan2.2-I2V-A14B: no CLIP, the condition channels alone
            assert "image_states" not in image and cond.get("encoder_hidden_states_image") is None
        assert torch.equal(image["condition"], cond["hidden_states"][:, enc.latent_channels:])
        mask, latent = image["condition"][:, :4], image["condition"][:, 4:]
        assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()
        assert latent[:, :, 1:].abs().amax() > 1e-3  # the causal VAE's code of the zero frames is not zero
    if kind == "wan-ti2v":  # the clean first frame replaces the noisy one; its tokens are at timestep 0
        from pose_mcore.models.registry import family_of_preset
        from pose_mcore.pose.conditioning import Conditioner

        image = enc.encode_first_frame(first_frame(kind=kind), FRAMES, *size(kind))
        assert torch.equal(image["first_frame"][:, :, 0], cond["hidden_states"][:, :, 0])
        noise = cond["hidden_states"].clone()
        conds = Conditioner(family_of_preset(TINY_PRESET[kind]).make_config(TINY_PRESET[kind]),
                            {k: v[0] for k, v in negative.items()})(
            {"latents": noise, **fields, **image})
        assert torch.equal(conds.inputs(noise), cond["hidden_states"])
        assert torch.equal(conds.timestep(torch.ones(1), noise), cond["timestep"])
        assert cond["timestep"][0, :6].eq(0).all() and cond["timestep"][0, 6:].eq(1000).all()
    if kind in ("wan-a14b-t2v", "wan-a14b-i2v"):  # both experts are in the folder; neither is loaded
        assert (model_folders[kind] / "transformer_2").is_dir()
        assert enc.pipe.transformer is None and enc.pipe.transformer_2 is None
    assert set(enc.fields()) == {"wan-t2v": {"latents", "text"}, "wan-i2v": {"latents", "text", "image_states",
                                                                               "condition"},
                                 "wan-ti2v": {"latents", "text", "first_frame"},
                                 "wan-a14b-t2v": {"latents", "text"},
                                 "wan-a14b-i2v": {"latents", "text", "condition"},
                                 "hunyuan-t2v": {"latents", "text", "text_mask", "pooled"},
                                 "hunyuan-i2v": {"latents", "text", "text_mask", "pooled", "condition"},
                                 "hunyuan-i2v-replace": {"latents", "text", "text_mask", "pooled", "first_frame"}}[kind]


@pytest.mark.parametrize("kind", ("hunyuan15-t2v", "hunyuan15-i2v"))
def test_hunyuan15_fields_equal_the_pipelines_inputs(model_folders, kind):
    """HunyuanVideo-1.5: the LLM text and glyph text with their masks (the prompt's quoted word in the glyph
    stream, none in the negative's), I2V's SigLIP tokens and condition channels, T2V's zero channels and image
    tokens; the conditioner gives the transformer's every keyword input, conditional and unconditional."""
    from pose_mcore.models.registry import family_of_preset
    from pose_mcore.pose.conditioning import Conditioner

    enc = encoders(model_folders[kind], kind)
    calls, _ = run_pipeline(kind, transformer(kind), guidance=2.0)
    assert len(calls) == 2  # conditional, then unconditional (the negative prompt)
    cond, uncond = calls
    fields = enc.encode_prompts([GLYPH_PROMPT])
    negative = {k: v[None] for k, v in enc.encode_negative(NEGATIVE, *size(kind)).items()}
    names = {"text": "encoder_hidden_states", "text_mask": "encoder_attention_mask", "glyph": "encoder_hidden_states_2",
             "glyph_mask": "encoder_attention_mask_2"}
    for field, key in names.items():
        assert torch.equal(fields[field], cond[key]) and torch.equal(negative[field], uncond[key]), field
    assert 0 < fields["text_mask"].sum() < TEXT_LEN[kind] and 0 < fields["glyph_mask"].sum() < 256
    assert negative["glyph_mask"].sum() == 0  # no quoted text: no glyph tokens
    latents = cond["hidden_states"][:, : enc.latent_channels]
    batch = {"latents": latents, **fields}
    if kind == "hunyuan15-i2v":
        first = enc.encode_first_frame(first_frame(kind=kind), FRAMES, *size(kind))
        assert torch.equal(first["image_states"], cond["image_embeds"])
        assert torch.equal(first["condition"], cond["hidden_states"][:, enc.latent_channels:])
        assert first["condition"][:, -1, 0].eq(1).all() and first["condition"][:, :, 1:].eq(0).all()
        batch.update(first)
    else:
        assert not cond["hidden_states"][:, enc.latent_channels:].any() and not cond["image_embeds"].any()
    conds = Conditioner(family_of_preset(TINY_PRESET[kind]).make_config(TINY_PRESET[kind]),
                        {k: v[0] for k, v in negative.items()})(batch)
    assert torch.equal(conds.inputs(latents), cond["hidden_states"])
    for name, want in (("cond", cond), ("uncond", uncond)):
        got = getattr(conds, name)
        given = {k for k, v in want.items() if v is not None} - {"hidden_states", "timestep", "attention_kwargs",
                                                                  "return_dict"}
        assert set(got) | {"image_embeds"} == given | {"image_embeds"}  # T2V's zero image tokens: none
        for key, value in got.items():
            assert torch.equal(value.to(want[key].dtype), want[key]), (name, key)
    assert set(enc.fields()) == {"latents", *names} | ({"image_states", "condition"} if kind.endswith("i2v") else set())
    frames = [first_frame(s, kind) for s in range(FRAMES)]  # the clip's latent: the VAE's mode times its scale
    pixels = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = enc.pipe.vae.encode(pixels).latent_dist.mean[0] * enc.pipe.vae.config.scaling_factor
    assert_close_rel(enc.encode_video(frames), want, 1e-5)
    assert want.shape == (4, 2, size(kind)[0] // 16, size(kind)[1] // 16)


@pytest.mark.parametrize("kind", ("wan-t2v", "hunyuan-t2v"))
def test_video_latents_are_the_vaes_normalised_mode(model_folders, kind):
    enc = encoders(model_folders[kind], kind)
    frames = [first_frame(s) for s in range(FRAMES)]
    latents = enc.encode_video(frames)
    vae = enc.pipe.vae
    pixels = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean
    cfg = vae.config
    if kind == "hunyuan-t2v":
        want = z * cfg.scaling_factor
    else:
        want = (z - torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)) / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    assert latents.shape == (4, 2, HEIGHT // 8, WIDTH // 8)
    assert_close_rel(latents, want[0], 1e-5)
    decoded = enc.decode(latents[None])
    assert decoded.shape == (1, FRAMES, HEIGHT, WIDTH, 3) and decoded.dtype == np.uint8
    vae_only = ModelEncoders(model_folders[kind], decode_only=True)  # the trainer's sample videos
    assert vae_only.pipe.text_encoder is None and np.array_equal(vae_only.decode(latents[None]), decoded)
    # --vae-tile 32: the VAE's own tiling with 32-pixel tiles overlapping by 8 (these clips are 48 wide)
    tiled = ModelEncoders(model_folders[kind], vae_tile=32)
    tiled_latents, tiled_video = tiled.encode_video(frames), tiled.decode(latents[None])
    assert not torch.equal(tiled_latents, latents) and not np.array_equal(tiled_video, decoded)  # tiling acted
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24)
    assert torch.equal(enc.encode_video(frames), tiled_latents) and np.array_equal(enc.decode(latents[None]), tiled_video)
    with pytest.raises(EncoderError, match="--vae-tile 20: must be a positive multiple of 32"):
        ModelEncoders(model_folders[kind], decode_only=True, vae_tile=20)


def test_folder_errors(model_folders, tmp_path):
    with pytest.raises(EncoderError, match="no model_index.json"):
        ModelEncoders(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_folders["wan-i2v"], broken)
    shutil.rmtree(broken / "image_encoder")
    with pytest.raises(EncoderError, match="component folder image_encoder/ is missing"):
        ModelEncoders(broken)
    enc = encoders(model_folders["wan-t2v"], "wan-t2v")
    with pytest.raises(EncoderError, match="--frames 6: this VAE takes 4k\\+1 frames"):
        enc.check_frames(6, HEIGHT, WIDTH)
    with pytest.raises(EncoderError, match="--height 40"):
        enc.check_frames(5, 40, WIDTH)


@pytest.mark.parametrize("kind", ("wan-i2v", "wan-ti2v", "wan-a14b-t2v", "wan-a14b-i2v", "hunyuan-t2v", "hunyuan-i2v",
                                  "hunyuan-i2v-replace", "hunyuan15-t2v", "hunyuan15-i2v"))
def test_one_step_sample_equals_the_pipeline(tp1, model_folders, kind, tmp_path):
    """Latents and decoded video, the first frame a photo of another size and aspect than the video (the
    pipeline resizes it for the VAE, its image encoder sees the original). HunyuanVideo-I2V (latent concat): the
    pipeline starts from 0.999 noise + 0.001 image latent and returns the latents and video without the
    conditioning image's frames. ``--image-fit crop`` equals the pipeline given the cropped image. Wan2.2-A14B:
    the generator (one model) from the two-expert folder's encoders, against the folder's pipeline with
    ``transformer=generator, transformer_2=None`` (one step at t = 1000, above either boundary). HunyuanVideo-1.5:
    the prompt with quoted (glyph) text, the guider at scale 1; I2V: the size its pipeline picks for the photo."""
    from pose_mcore.checkpoint.convert import import_checkpoint
    from pose_mcore.checkpoint.load import load_model
    from pose_mcore.inference.sample import Request, SampleError, conditioning, generate, video, video_size

    model = transformer(kind)
    model.save_pretrained(tmp_path / "diffusers")
    # Wan2.2 TI2V's diffusers config does not say which task: the import is told (image-to-video)
    overrides = {"image_condition_type": "token_replace"} if kind == "wan-ti2v" else None
    import_checkpoint(tmp_path / "diffusers", tmp_path / "generator", overrides=overrides)
    photo = first_frame(kind=kind, pixels=PHOTO)
    _, want = run_pipeline(kind, model, guidance=1.0, seed=11, image=photo)
    _, want_video = run_pipeline(kind, model, guidance=1.0, seed=11, output_type="np", image=photo)
    enc = encoders(model_folders[kind], kind)
    generator = load_model(tmp_path / "generator")
    image = tmp_path / "first.png"
    photo.save(image)
    prompt = GLYPH_PROMPT if kind.startswith("hunyuan15") else PROMPT
    request = Request(prompt, image if kind not in TEXT_TO_VIDEO else None, 11, tmp_path / "o.mp4")
    assert video_size(enc, generator.config, request, 480, 832) == (size(kind) if kind == "hunyuan15-i2v" else
                                                                     (480, 832))
    if kind not in TEXT_TO_VIDEO:
        from pose_mcore.data.video import fit
        cropped = conditioning(enc, generator.config, request, "", FRAMES, *size(kind), image_fit="crop")
        _, want_cropped = run_pipeline(kind, model, guidance=1.0, seed=11, image=fit(photo, *size(kind)))
        assert_close_rel(generate(generator, cropped, enc.latent_shape(1, FRAMES, *size(kind)), seed=11)[
            :, :, -want_cropped.shape[2]:], want_cropped, 1e-5)
    batch = conditioning(enc, generator.config, request, "", FRAMES, *size(kind))
    got = generate(generator, batch, enc.latent_shape(1, FRAMES, *size(kind)), seed=11)
    frames = video(enc, generator.config, got)
    if kind == "hunyuan-i2v":
        assert got.shape[2] == want.shape[2] + 1 and len(frames) == FRAMES - enc.temporal
        got = got[:, :, 1:]
        with pytest.raises(SampleError, match="--frames 1: .* leaves out the first 4 frames; give at least 9"):
            conditioning(enc, generator.config, request, "", 1, *size(kind))
    assert got.shape == want.shape
    assert_close_rel(got, want, 1e-5)
    assert frames.shape == want_video.shape[1:] and frames.dtype == np.uint8
    assert np.abs(frames.astype(np.float64) - want_video[0] * 255).max() <= 0.5 + 1e-3  # rounding to uint8
