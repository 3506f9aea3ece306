"""fp8 (e4m3fn) weights with a per-tensor scale, as ComfyUI's "scaled fp8" files hold them.

Layout: each quantised weight ``<module>.weight`` is stored in ``float8_e4m3fn`` as ``W / s`` with
``s = max|W| / 448`` (e4m3fn's largest finite value), ``<module>.scale_weight`` holds ``s`` (fp32,
a scalar), and an empty ``scaled_fp8`` tensor marks the file. Only the 2-D (linear) weights of the
transformer blocks are quantised, as in the published fp8 Wan and HunyuanVideo files; everything else
stays in bf16.

Error bound of one weight: e4m3fn keeps 3 mantissa bits, so rounding a normal value costs at most
2^-4 of it, and a subnormal one (below 2^-6) at most half the spacing 2^-9: per element
``|W - deq(W)| <= 2^-4 |W| + 2^-10 s``.

Reading: :class:`Fp8Dequantized` wraps a source so that fp8 tensors come out in fp32, multiplied by
their scale where the file has one (a plain, unscaled e4m3fn file reads as its values), and the
scale and marker entries disappear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pose_mcore.checkpoint.io import TensorSource

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_SUFFIX = ".scale_weight"
MARKER = "scaled_fp8"
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def quantized(name: str, shape: Sequence[int]) -> bool:
    """Whether the fp8 export stores this tensor in fp8: the linear weights of the blocks."""
    return name.endswith(".weight") and len(shape) == 2 and "blocks." in name


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W / s in e4m3fn, s)`` with a per-tensor scale ``s = max|W| / 448`` (fp32 scalar)."""
    w = weight.float()
    scale = (w.abs().max() / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (w / scale).to(FP8), scale.reshape(())


def error_bound(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Largest |W - deq(quantize(W))| per element (see the module docstring)."""
    return weight.float().abs() * 2.0**-4 + scale.float() * 2.0**-10


def _is_marker(key: str) -> bool:
    return key == MARKER or key.endswith("." + MARKER)  # also under ComfyUI's model.diffusion_model. prefix


class Fp8Dequantized(TensorSource):
    """A source whose fp8 tensors read as fp32 values (scaled where the file has a scale)."""

    def __init__(self, inner: TensorSource) -> None:
        self.inner, self.path = inner, inner.path
        keys = inner.keys()
        self._scales = {k[: -len(SCALE_SUFFIX)] + ".weight": k for k in keys if k.endswith(SCALE_SUFFIX)}
        hidden = set(self._scales.values()) | {k for k in keys if _is_marker(k) or k.endswith(".scale_input")}
        self._keys = [k for k in keys if k not in hidden]

    @staticmethod
    def wraps(source: TensorSource) -> bool:
        """Whether ``source`` holds any fp8 tensor (or scale)."""
        return any(k.endswith(SCALE_SUFFIX) or _is_marker(k) or source.dtype(k) in _FP8_DTYPES for k in source.keys())

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return torch.float32 if self.inner.dtype(key) in _FP8_DTYPES else self.inner.dtype(key)

    def _dequantize(self, key: str, t: torch.Tensor) -> torch.Tensor:
        if t.dtype not in _FP8_DTYPES:
            return t
        t = t.float()
        return t * self.inner.get(self._scales[key]).float() if key in self._scales else t

    def get(self, key: str) -> torch.Tensor:
        return self._dequantize(key, self.inner.get(key))

    def get_ranges(self, key: str, dim: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self._dequantize(key, self.inner.get_ranges(key, dim, ranges))
