"""Tiny random-weight diffusers model folders (no transformer), built locally: the real component classes
(AutoencoderKLWan / AutoencoderKLHunyuanVideo / AutoencoderKLHunyuanVideo15, UMT5, CLIP vision and text, Llama,
Qwen2.5-VL's text model, ByT5, SigLIP) with small configs and word-level tokenizers made here (ByT5's needs no
vocabulary). Nothing is downloaded.

``model_folder(kind, path)`` writes the folder ``pose-prepare`` / ``pose-sample`` read; ``pipeline(kind,
transformer)`` is the same pipeline in memory, with a transformer for the parity tests (the tiny diffusers
transformers of wan_reference / hunyuan_reference, whose dims fit ``TINY_PRESET[kind]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a the red green blue square disk cross moving left right up down fast slow video of on in with and "
         "low quality blurry static bright cat dog runs jumps").split()
KINDS = ("wan-t2v", "wan-i2v", "wan-ti2v", "wan-a14b-t2v", "wan-a14b-i2v", "hunyuan-t2v", "hunyuan-i2v",
         "hunyuan-i2v-replace", "hunyuan15-t2v", "hunyuan15-i2v")
TINY_PRESET = {"wan-t2v": "tiny-t2v", "wan-i2v": "tiny-i2v", "wan-ti2v": "tiny-ti2v-i2v", "wan-a14b-t2v": "tiny-t2v",
               "wan-a14b-i2v": "tiny-i2v-a14b", "hunyuan-t2v": "tiny-hunyuan-t2v", "hunyuan-i2v": "tiny-hunyuan-i2v",
               "hunyuan-i2v-replace": "tiny-hunyuan-i2v-token-replace", "hunyuan15-t2v": "tiny-hunyuan1.5-t2v",
               "hunyuan15-i2v": "tiny-hunyuan1.5-i2v"}
"""The tiny pose_mcore preset whose DiT (one expert of a Wan2.2-A14B folder: the generator) fits each folder's
encoders."""
BOUNDARY = {"wan-a14b-t2v": 0.875, "wan-a14b-i2v": 0.9}
"""Wan2.2-A14B folders (two experts, ``transformer_2``, ``boundary_ratio``; the I2V one has no CLIP)."""


LLAVA_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>", "system", "user", "assistant",
                "describe", ":")
"""Words of HunyuanVideo-I2V's LLaVA prompt template (kept whole by the tokenizer)."""


def _tokenizer(specials: dict[str, str], max_length: int, extra: tuple[str, ...] = ()):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials.values(), *WORDS, *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in extra if t.startswith("<")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)


def _wan_vae(wan22: bool = False):
    """Wan2.1's VAE (8x spatial), or Wan2.2's (residual, 2x2 patchified pixels, 16x spatial)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(1)
    extra = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16) if wan22 \
        else {}
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                            latents_std=[1.5, 0.8, 1.2, 2.0], **extra)


def _wan_parts(i2v: bool, wan22: bool = False) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(2)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=48, num_layers=1,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1))
    parts = {"vae": _wan_vae(wan22), "text_encoder": text_encoder,
             "tokenizer": _tokenizer({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, 16),
             "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}
    if i2v:
        torch.manual_seed(3)
        parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8))
        parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    return parts


def _hunyuan_parts() -> dict:
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(4)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True)
    llama = LlamaModel(LlamaConfig(vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=8, intermediate_size=16,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    specials = {"pad_token": "<pad>", "bos_token": "<s>", "unk_token": "<unk>"}
    return {"vae": vae, "text_encoder": llama, "tokenizer": _tokenizer(specials, 64), "text_encoder_2": clip,
            "tokenizer_2": _tokenizer({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, 77),
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0)}


def _hunyuan_i2v_parts() -> dict:
    """HunyuanVideo-I2V: a LLaVA text encoder that reads the first frame, the CLIP image processor."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    parts = _hunyuan_parts()
    specials = {"pad_token": "<pad>", "bos_token": "<s>", "unk_token": "<unk>"}
    tokenizer = _tokenizer(specials, 64, LLAVA_TOKENS)
    torch.manual_seed(6)
    parts["text_encoder"] = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=0),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=0, vision_feature_layer=-2,
        vision_feature_select_strategy="default"))
    parts["tokenizer"] = tokenizer
    parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    return parts


QWEN_CHAT = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {% if m['role'] == 'system' %}" + "video " * 38
             + "{% endif %}{{ m['content'] }} <|im_end|> {% endfor %}"
             "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
"""Qwen2.5-VL's chat template in the tiny tokenizer's words (the pipelines build the prompt with it). Its system
turn is filled to the 108 tokens the pipelines crop (their ``prompt_template_encode_start_idx``), as Qwen's own
tokens of the system message number, so the user's words come first after the crop."""
QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "system", "user", "assistant")


def _hunyuan15_parts(i2v: bool) -> dict:
    """HunyuanVideo-1.5: its 16x VAE, Qwen2.5-VL's text model, ByT5 for glyph text, the guider; I2V adds SigLIP.
    Dims fit the tiny-hunyuan1.5 presets (LLM 16, glyph 12, image 10 wide; 4 latent channels)."""
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    torch.manual_seed(12)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
                                      scaling_factor=0.9)
    tokenizer = _tokenizer({"pad_token": "<pad>", "unk_token": "<unk>"}, 2048, QWEN_TOKENS)
    tokenizer.chat_template = QWEN_CHAT
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}))
    byt5 = T5EncoderModel(T5Config(vocab_size=384, d_model=12, d_kv=4, d_ff=16, num_layers=1, num_heads=3))
    parts = {"vae": vae, "text_encoder": qwen, "tokenizer": tokenizer, "text_encoder_2": byt5,
             "tokenizer_2": ByT5Tokenizer(), "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
             "guider": ClassifierFreeGuidance(guidance_scale=1.0)}
    if i2v:
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(13)
        parts["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=10, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8))
        parts["feature_extractor"] = SiglipImageProcessor(size={"height": 32, "width": 32})
    return parts


HUNYUAN_TEMPLATE = {"template": "describe the video : {}", "crop_start": 4}
"""A prompt template for the tiny tokenizer (the real one's crop_start=95 counts Llama-3 tokens)."""
HUNYUAN_I2V_TEMPLATE = {
    "template": "<|start_header_id|> system <|end_header_id|> <image> describe : <|eot_id|> <|start_header_id|> user "
                "<|end_header_id|> {} <|eot_id|> <|start_header_id|> assistant <|end_header_id|>",
    "crop_start": 10, "image_emb_start": 3, "image_emb_end": 19, "image_emb_len": 16}
"""The real I2V template's structure for the tiny tokenizer: 16 image tokens (a 32 px image in 8 px patches)."""


def pipeline(kind: str, transformer=None, image_to_video: bool = True, transformer_2=None):
    """The diffusers pipeline of a tiny folder of ``kind`` (:data:`KINDS`). Wan2.2 TI2V ('wan-ti2v') is a
    ``WanPipeline`` folder with ``expand_timesteps`` (as published); ``image_to_video`` loads it as the
    image-to-video pipeline. Wan2.2-A14B: ``transformer_2`` the low-noise expert (None: the pipeline runs
    ``transformer`` at every step, as it does a one-step generator)."""
    from diffusers import (
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoPipeline,
        WanImageToVideoPipeline,
        WanPipeline,
    )

    a14b = {"transformer_2": transformer_2, "boundary_ratio": BOUNDARY.get(kind)} if kind in BOUNDARY else {}
    cls, parts = {"wan-t2v": (WanPipeline, lambda: _wan_parts(False)),
                  "wan-i2v": (WanImageToVideoPipeline, lambda: _wan_parts(True)),
                  "wan-ti2v": (WanImageToVideoPipeline if image_to_video else WanPipeline,
                               lambda: dict(_wan_parts(False, wan22=True), expand_timesteps=True)),
                  "wan-a14b-t2v": (WanPipeline, lambda: dict(_wan_parts(False), **a14b)),
                  "wan-a14b-i2v": (WanImageToVideoPipeline,
                                   lambda: dict(_wan_parts(False), image_encoder=None, image_processor=None, **a14b)),
                  "hunyuan-t2v": (HunyuanVideoPipeline, _hunyuan_parts),
                  "hunyuan-i2v": (HunyuanVideoImageToVideoPipeline, _hunyuan_i2v_parts),
                  "hunyuan-i2v-replace": (HunyuanVideoImageToVideoPipeline, _hunyuan_i2v_parts),
                  "hunyuan15-t2v": (HunyuanVideo15Pipeline, lambda: _hunyuan15_parts(False)),
                  "hunyuan15-i2v": (HunyuanVideo15ImageToVideoPipeline, lambda: _hunyuan15_parts(True))}[kind]
    parts = {k: v.eval() if isinstance(v, torch.nn.Module) else v for k, v in parts().items()}  # as loaded
    return cls(transformer=transformer, **parts)


def model_folder(kind: str, path: Path) -> Path:
    """Write a tiny diffusers model folder of ``kind`` without a transformer; return it. HunyuanVideo-I2V with
    token replacement ('hunyuan-i2v-replace') is the I2V folder whose transformer config says so (the
    weights are not needed). A Wan2.2-A14B folder holds both experts, as published (pose_mcore loads neither)."""
    experts = {}
    if kind in BOUNDARY:
        from wan_reference import diffusers_wan

        experts = {"transformer": diffusers_wan(kind.endswith("i2v"), seed=8, clip=False),
                   "transformer_2": diffusers_wan(kind.endswith("i2v"), seed=9, clip=False)}
    pipeline(kind, image_to_video=False, **experts).save_pretrained(path)
    if kind == "hunyuan-i2v-replace":
        (path / "transformer").mkdir()
        (path / "transformer" / "config.json").write_text(json.dumps(
            {"_class_name": "HunyuanVideoTransformer3DModel", "image_condition_type": "token_replace"}))
    return path
