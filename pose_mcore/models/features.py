"""Hidden states after chosen blocks of a DiT, for the discriminator (the model knows nothing of it).

Features are the block outputs as the model holds them: sequence-first ``[s, b, d]``, this rank's
padded token shard under sequence or context parallelism (``valid_tokens`` says how many are real).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pose_mcore.parallel.context import token_shards


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in order (Wan: ``blocks``; HunyuanVideo: dual- then single-stream; HunyuanVideo-1.5:
    dual-stream)."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    return [*model.double_blocks, *getattr(model, "single_blocks", ())]


def default_layers(model: nn.Module) -> list[int]:
    """Blocks at 1/4, 1/2, 3/4 of the depth and the last (distinct)."""
    return spread_layers(len(feature_blocks(model)))


def spread_layers(n: int) -> list[int]:
    """Of ``n`` blocks, those at 1/4, 1/2, 3/4 of the depth and the last (distinct)."""
    return sorted({max(0, round(n * f) - 1) for f in (0.25, 0.5, 0.75, 1.0)})


def _text_only(block: nn.Module) -> list[nn.Parameter]:
    """The parameters of a block that make only its text stream (HunyuanVideo's dual-stream block), if any."""
    return [p for name in getattr(block, "text_only", ()) for p in block.get_submodule(name).parameters()]


def _unread(model: nn.Module) -> list[nn.Parameter]:
    """What the model's config never feeds (``unread_parameters``: HunyuanVideo-1.5 T2V's image projection)."""
    return getattr(model, "unread_parameters", list)()


def unused_by_output(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that cannot change the model's output: the text-only parts of its last block when that is a
    dual-stream block (HunyuanVideo-1.5; the text stream after it is dropped), and what its config never feeds.
    They never get a gradient, so a trained role leaves them out (megatron's DDP asserts, from the second step,
    that every parameter of a bucket got one)."""
    blocks = feature_blocks(model) if hasattr(model, "blocks") or hasattr(model, "double_blocks") else []
    return (_text_only(blocks[-1]) if blocks else []) + _unread(model)


def unused_by_features(model: nn.Module, layers: Sequence[int]) -> list[nn.Parameter]:
    """Parameters that cannot change the outputs of blocks ``layers``: the blocks after the last of them, the
    output layers, and in the last of them the parts that make only its text stream (HunyuanVideo's
    dual-stream blocks; a feature is the video tokens). A discriminator backbone trained through its
    features gives them no gradient."""
    last, *after = feature_blocks(model)[max(layers):]
    out = [p for block in after for p in block.parameters()]
    out += _text_only(last) + _unread(model)
    for name in model.output_layers:
        part = getattr(model, name)
        out += [part] if isinstance(part, nn.Parameter) else list(part.parameters())
    return out


@dataclass
class Features:
    layers: list[int]
    hidden: list[torch.Tensor] = field(default_factory=list)
    """Block outputs ``[s_local, b, d]`` in ``layers`` order."""
    grid: tuple[int, int, int] | None = None
    """Token grid (frames, height, width) of the whole sequence."""
    sequence_parallel: bool = False
    """The model splits its tokens over the TP ranks too (and over the CP ranks in any case)."""

    def valid_tokens(self) -> int:
        """Real (not padding) tokens in this rank's shard."""
        total = self.grid[0] * self.grid[1] * self.grid[2]
        local = self.hidden[0].shape[0]
        start = token_shards(self.sequence_parallel)[0] * local
        return max(0, min(local, total - start))


@contextlib.contextmanager
def capture_features(model: nn.Module, layers: Sequence[int], hidden_states: torch.Tensor) -> Iterator[Features]:
    """Record the outputs of blocks ``layers`` during the forward run inside the ``with`` body.

    Only the first call of each block is recorded, so recomputation under activation checkpointing
    does not overwrite them.
    """
    blocks = feature_blocks(model)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"feature layers {bad} out of range: the model has {len(blocks)} blocks")
    patch = model.config.patch_size
    feats = Features(list(layers), grid=tuple(n // p for n, p in zip(hidden_states.shape[2:], patch, strict=True)),
                     sequence_parallel=model.config.sequence_parallel)
    slots: dict[int, torch.Tensor] = {}

    def hook_for(index: int):
        def hook(module, args, output):
            if index not in slots:
                slots[index] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
        feats.hidden[:] = [slots[i] for i in layers if i in slots]
