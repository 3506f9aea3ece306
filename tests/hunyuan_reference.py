"""Shared helpers for HunyuanVideo tests: tiny diffusers models with random weights and inputs."""

from __future__ import annotations

import torch

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=2,
            num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
            guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_theta=256.0, rope_axes_dim=(2, 2, 4))
VARIANTS = {  # name -> (diffusers overrides, pose_mcore preset)
    "t2v": ({}, "tiny-hunyuan-t2v"),
    "i2v_concat": (dict(in_channels=9, guidance_embeds=False, image_condition_type="latent_concat"), "tiny-hunyuan-i2v"),
    "i2v_replace": (dict(image_condition_type="token_replace"), "tiny-hunyuan-i2v-token-replace"),
}


def diffusers_hunyuan(variant: str, seed: int = 0):
    """A tiny diffusers HunyuanVideoTransformer3DModel whose every parameter is random."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**{**TINY, **VARIANTS[variant][0]}).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def hunyuan_inputs(variant: str, batch: int, frames: int, height: int, width: int, text_lengths: list[int],
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with a prefix text mask: sample i has ``text_lengths[i]`` valid tokens of ``max(text_lengths) + 2``."""
    gen = torch.Generator().manual_seed(seed)
    cfg = {**TINY, **VARIANTS[variant][0]}
    text_len = max(text_lengths) + 2
    mask = (torch.arange(text_len)[None, :] < torch.tensor(text_lengths)[:, None]).long()
    inputs = {
        "hidden_states": torch.randn(batch, cfg["in_channels"], frames, height, width, generator=gen),
        "timestep": torch.rand(batch, generator=gen) * 1000,
        "encoder_hidden_states": torch.randn(batch, text_len, cfg["text_embed_dim"], generator=gen),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(batch, cfg["pooled_projection_dim"], generator=gen),
    }
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs
