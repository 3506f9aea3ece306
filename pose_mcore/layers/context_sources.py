"""Several context streams (text, glyph text, image tokens) joined into the one context a joint
attention reads, each token marked with a learned embedding of its source."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ContextSources(nn.Module):
    """``n`` context sources at the model width -> one context ``[l, b, d]`` (sequence-first) and its key
    mask ``[b, l]``.

    Source ``i``'s tokens get row ``i`` of ``source_embedding`` added (HunyuanVideo-1.5's condition type
    embedding: 0 LLM text, 1 glyph text, 2 image). The streams are concatenated with their masks; a masked
    token is never a key, and context tokens carry no position, so a joint attention's output on the
    valid tokens does not depend on where the padding sits (diffusers moves every valid token first; the
    result on them is the same)."""

    def __init__(self, sources: int, hidden_size: int) -> None:
        super().__init__()
        self.source_embedding = nn.Embedding(sources, hidden_size)

    def forward(self, streams: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``streams``: (source index, tokens ``[b, l_i, d]``, mask ``[b, l_i]``) in the order they are joined."""
        tokens = [x + self.source_embedding.weight[source].to(x.dtype) for source, x, _ in streams]
        masks = [mask.bool() for _, _, mask in streams]
        return torch.cat(tokens, dim=1).transpose(0, 1), torch.cat(masks, dim=1)
