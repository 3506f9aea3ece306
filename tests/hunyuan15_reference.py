"""Shared helpers for HunyuanVideo-1.5 tests: tiny diffusers models with random weights and inputs."""

from __future__ import annotations

import torch

TINY = dict(in_channels=9, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=2,
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=16,
            text_embed_2_dim=12, image_embed_dim=10, rope_theta=256.0, rope_axes_dim=(2, 2, 4), target_size=32)
VARIANTS = {  # name -> (diffusers overrides, pose_mcore preset)
    "t2v": (dict(task_type="t2v"), "tiny-hunyuan1.5-t2v"),
    "i2v": (dict(task_type="i2v"), "tiny-hunyuan1.5-i2v"),
    "meanflow": (dict(task_type="i2v", use_meanflow=True), "tiny-hunyuan1.5-meanflow"),
}
IMAGE_TOKENS = 5


def diffusers_hunyuan15(variant: str, seed: int = 0):
    """A tiny diffusers HunyuanVideo15Transformer3DModel whose every parameter is random."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideo15Transformer3DModel(**{**TINY, **VARIANTS[variant][0]}).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _prefix_mask(lengths: list[int], total: int) -> torch.Tensor:
    return (torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]).long()


def hunyuan15_inputs(variant: str, batch: int, frames: int, height: int, width: int, text_lengths: list[int],
                     glyph_lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs as the pipelines build them: prefix masks (``text_lengths[i]`` valid LLM tokens of
    ``max + 2``, ``glyph_lengths[i]`` glyph tokens of ``max + 1``, a 0 for a prompt without quoted text),
    zero image tokens for T2V, and ``timestep_r`` for the mean-flow variant."""
    gen = torch.Generator().manual_seed(seed)
    cfg = {**TINY, **VARIANTS[variant][0]}
    text_len, glyph_len = max(text_lengths) + 2, max(glyph_lengths) + 1
    image = torch.randn(batch, IMAGE_TOKENS, cfg["image_embed_dim"], generator=gen)
    inputs = {
        "hidden_states": torch.randn(batch, cfg["in_channels"], frames, height, width, generator=gen),
        "timestep": torch.rand(batch, generator=gen) * 1000,
        "encoder_hidden_states": torch.randn(batch, text_len, cfg["text_embed_dim"], generator=gen),
        "encoder_attention_mask": _prefix_mask(text_lengths, text_len),
        "encoder_hidden_states_2": torch.randn(batch, glyph_len, cfg["text_embed_2_dim"], generator=gen),
        "encoder_attention_mask_2": _prefix_mask(glyph_lengths, glyph_len),
        "image_embeds": image if cfg["task_type"] == "i2v" else torch.zeros_like(image),
    }
    if cfg.get("use_meanflow"):
        inputs["timestep_r"] = inputs["timestep"] * torch.rand(batch, generator=gen)
    return inputs
