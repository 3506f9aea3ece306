"""Shared helpers for Wan tests: tiny diffusers models with random weights, inputs, state-dict mapping."""

from __future__ import annotations

import torch

TINY = dict(num_attention_heads=4, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32, freq_dim=16,
            ffn_dim=96, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=32)
TINY_I2V = dict(TINY, in_channels=12, image_dim=24, added_kv_proj_dim=48)
TEXT_LEN = 512  # diffusers' Wan I2V processor hard-codes 512 text tokens after the image tokens


def diffusers_wan(i2v: bool = False, seed: int = 0, clip: bool = True):
    """A tiny diffusers WanTransformer3DModel whose every parameter is random (norm weights included); ``i2v``
    without ``clip``: Wan2.2-I2V-A14B's (the condition channels, no image branch)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    config = (TINY_I2V if clip else dict(TINY, in_channels=12)) if i2v else TINY
    model = WanTransformer3DModel(**config).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def wan_inputs(i2v: bool, batch: int, frames: int, height: int, width: int, seed: int = 0,
               per_token_timestep: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cfg = TINY_I2V if i2v else TINY
    inputs = {
        "hidden_states": torch.randn(batch, cfg["in_channels"], frames, height, width, generator=gen),
        "encoder_hidden_states": torch.randn(batch, TEXT_LEN if i2v else 7, cfg["text_dim"], generator=gen),
    }
    if per_token_timestep:
        tokens = frames * (height // 2) * (width // 2)
        inputs["timestep"] = torch.rand(batch, tokens, generator=gen) * 1000
    else:
        inputs["timestep"] = torch.rand(batch, generator=gen) * 1000
    if i2v:
        inputs["encoder_hidden_states_image"] = torch.randn(batch, 5, cfg["image_dim"], generator=gen)
    return inputs
