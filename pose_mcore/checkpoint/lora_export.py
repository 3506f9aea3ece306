"""The distilled generator as a LoRA against its teacher, in the key styles diffusers and ComfyUI load.

Every linear weight of the target layout (official or diffusers names) becomes a rank-r factor pair
of ``W_generator - W_teacher``: a truncated SVD in fp32, one tensor at a time, or, with ``rank=None``
("full"), the exact difference as ``B = delta, A = I`` (no SVD, no rounding beyond fp32). What a LoRA
cannot express is written as a full difference: ``<module>.diff_b`` for a bias, ``<module>.diff``
for any other tensor (norms, modulation tables, the patch embedding).

Key styles:

- ``official``: ``diffusion_model.<official module>.lora_A.weight / lora_B.weight`` (+ ``.alpha`` on
  Wan's block layers, equal to the rank, so the scale is 1; diffusers' converter takes an alpha nowhere
  else), ``.diff_b``, ``.diff``: what ComfyUI applies, and what
  diffusers' converter for non-diffusers Wan LoRAs reads (it reads ``diff_b`` as peft's LoRA bias
  and skips ``diff`` entries). For HunyuanVideo, diffusers' converter splits the LoRA factors of
  fused layers itself; two of its rules cannot take a factor pair (it chunks the refiner's fused
  q, k, v ``lora_A`` along the rank, and swaps the halves of the final AdaLN ``lora_A``), so the
  refiner's ``self_attn_qkv`` is written as a ``diff`` and the final AdaLN's ``A`` is written twice
  (``[A; A]`` with ``[B/2, B/2]``: the same product, unchanged by the swap). It has no rule for
  ``diff`` / ``diff_b`` entries, nor for ``.alpha`` (so none is written for HunyuanVideo: the scale
  is 1, ComfyUI's default without one).
- ``diffusers``: ``transformer.<diffusers module>.lora_A.weight / lora_B.weight / lora_B.bias``, what
  ``load_lora_adapter`` reads directly (peft, ``lora_bias``). Tensors a peft LoRA cannot hold are
  left out and reported.

The rank, alpha, base model and key style are in the safetensors header (``pose_mcore.*`` keys). The base
model is named by its variant and its folder's name (never a local path: a published file would publish the
exporter's file system) and identified by a BLAKE2b digest of its tensors (:func:`base_digest` gives a
checkpoint's, to check a base against a LoRA).
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pose_mcore.checkpoint.convert import LAYOUTS, Detected, _Group, _groups, detect, expected_shapes, meta_model
from pose_mcore.checkpoint.io import (
    CheckpointError,
    MemorySource,
    SafetensorsStreamWriter,
    TensorSource,
    atomic_destination,
)
from pose_mcore.checkpoint.layouts.rules import invert
from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.models.experts import EXPERTS
from pose_mcore.models.registry import family_of_config
from pose_mcore.parallel.replicas import tensor_digest

KEY_STYLES = {"official": "diffusion_model.", "diffusers": "transformer."}
_HUNYUAN_AS_DIFF = re.compile(r"^txt_in\.individual_token_refiner\.blocks\.\d+\.self_attn_qkv\.weight$")
_HUNYUAN_DOUBLED_A = "final_layer.adaLN_modulation.1.weight"


@dataclass
class _Entry:
    """One target tensor of the export and what it becomes: ``lora`` (a factor pair), ``bias``
    (``diff_b`` / ``lora_B.bias``), ``diff`` (a full difference) or ``skip`` (not representable); ``carried``:
    whether diffusers' LoRA loading applies it (ComfyUI applies every entry)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int = 0
    doubled: bool = False
    carried: bool = False

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0] if self.name.endswith((".weight", ".bias")) else self.name


@dataclass
class LoRAExport:
    """What was written: per layer type the rank and the relative errors, and the full differences."""

    path: Path
    rank: str
    family: str
    lora_errors: dict[str, list[tuple[int, float, float]]] = field(default_factory=lambda: defaultdict(list))
    diffs: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Relative changes of the entries written that diffusers drops, per tensor type."""
    skipped: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Relative changes of the tensors this key style cannot hold, per tensor type."""

    def summary(self) -> list[str]:
        """Lines for the terminal: per layer type the relative error of the weight difference and of
        the weight itself at the exported rank; the tensors written as full differences (or left out)
        with their relative change."""
        lines = [f"{'layer type':<48} {'n':>4} {'rank':>6} {'err(dW)':>10} {'err(W)':>10}"]
        for kind, rows in sorted(self.lora_errors.items()):
            ranks = sorted({r for r, _, _ in rows})
            rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
            lines.append(f"{kind:<48} {len(rows):>4} {rank:>6} {max(e for _, e, _ in rows):>10.3g} "
                         f"{max(e for _, _, e in rows):>10.3g}")
        for title, table in (("full differences diffusers drops (diff / diff_b)", self.diffs),
                             ("not representable in this key style, left out", self.skipped)):
            if table:
                lines.append(f"{title}: relative change |dW| / |W| per tensor type (largest)")
                lines += [f"  {kind:<46} {len(v):>4} {max(v):>10.3g}" for kind, v in sorted(table.items())]
        lost = max((v for table in (self.diffs, self.skipped) for vs in table.values() for v in vs), default=0.0)
        if lost > 0:
            how = ("diffusers' load_lora_weights drops these diff / diff_b entries (ComfyUI applies them)"
                   if self.diffs else "this file leaves them out")
            lines.append(f"in diffusers: {how}, so the teacher with this LoRA is the generator's linear layers only, "
                         f"not the generator (the tensors above change by up to {lost:.3g}); for the generator "
                         f"itself: pose-convert export --layout {self.family}-diffusers (full weights), or train "
                         "with phase1.generator_params=linears phase2.generator_params=linears")
        elif self.diffs or self.skipped:
            lines.append("in diffusers: every tensor a LoRA cannot carry is the teacher's (a generator trained with "
                         "generator_params=linears), so the teacher with this LoRA is the generator")
        return lines


def _layer_type(name: str) -> str:
    return re.sub(r"blocks\.\d+\.", "blocks.*.", name)


def _plan_entries(name: str, shape: tuple[int, ...], family: str, style: str, rank: int | None,
                  linears: set[str]) -> _Entry:
    if name.endswith(".weight") and name.removesuffix(".weight") in linears:
        if style == "official" and family == "hunyuan" and _HUNYUAN_AS_DIFF.match(name):
            return _Entry(name, "diff", shape)
        full = min(shape)
        if rank is not None and rank > full and "blocks." in name:
            raise CheckpointError(f"--rank {rank} is larger than the layer {name} of shape {shape} (its full rank "
                                  f"is {full}); use --rank {full} or less, or --rank full")
        doubled = style == "official" and family == "hunyuan" and name == _HUNYUAN_DOUBLED_A
        # a --rank above a small layer's full rank (the head, 64 outputs at 14B) keeps the rank all layers have,
        # its exact factors padded with zeros: one rank in the file, which every LoRA loader scales alike
        return _Entry(name, "lora", shape, full if rank is None else rank, doubled, carried=True)
    linear = name.removesuffix(".bias") in linears
    if name.endswith(".bias") and (style == "official" or linear):
        # diffusers: peft's lora_B.bias exists on adapted linears only; its Wan converter reads a linear's diff_b
        # as one, its HunyuanVideo converter none
        return _Entry(name, "bias", shape, carried=linear and (style == "diffusers" or family == "wan"))
    return _Entry(name, "skip" if style == "diffusers" else "diff", shape)


def _has_alpha(entry: _Entry, style: str, family: str) -> bool:
    """Wan's block layers carry ``.alpha`` in the official style (diffusers' converter reads it only there)."""
    return style == "official" and family == "wan" and entry.name.startswith("blocks.")


def _tensors(entry: _Entry, prefix: str, style: str, family: str, dtype: torch.dtype
             ) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    m = prefix + entry.module
    if entry.kind == "lora":
        out_f, in_f = entry.shape
        r = entry.rank * (2 if entry.doubled else 1)
        metas = [(f"{m}.lora_A.weight", dtype, (r, in_f)), (f"{m}.lora_B.weight", dtype, (out_f, r))]
        if _has_alpha(entry, style, family):
            metas.append((f"{m}.alpha", torch.float32, ()))
        return metas
    if entry.kind == "bias":
        return [(f"{m}.{'lora_B.bias' if style == 'diffusers' else 'diff_b'}", dtype, entry.shape)]
    if entry.kind == "diff":
        return [(f"{m}.diff", dtype, entry.shape)]
    return []


def _factor(delta: torch.Tensor, rank: int, full: bool, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` with ``B @ A`` the best rank-``rank`` approximation of ``delta`` (exact when ``full``; a ``rank``
    above ``delta``'s full rank pads the exact factors with zeros)."""
    out_f, in_f = delta.shape
    if full:
        b, a = (delta, torch.eye(in_f, dtype=delta.dtype)) if in_f <= out_f else (torch.eye(out_f, dtype=delta.dtype),
                                                                                  delta)
        pad = max(rank - b.shape[1], 0)
        return torch.nn.functional.pad(b, (0, pad)), torch.nn.functional.pad(a, (0, 0, 0, pad))
    u, s, vh = torch.linalg.svd(delta.to(device), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).cpu(), (root[:, None] * vh[:rank]).cpu()


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.norm() / ref.norm().clamp_min(1e-30)).item()


def _same_model(gen: Detected, base: Detected, src: Path, base_path: Path) -> None:
    if gen.layout != "pose" or base.layout != "pose":
        bad, found = (src, gen) if gen.layout != "pose" else (base_path, base)
        raise CheckpointError(f"{bad}: a LoRA export reads pose_mcore checkpoints; this is a {found.layout} one "
                              "(import it first)")
    if gen.family != base.family:
        raise CheckpointError(f"{src} is a {gen.family} model but the teacher {base_path} is a {base.family} one")
    a, b = gen.config.architecture(), base.config.architecture()
    differ = [f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        raise CheckpointError(f"{src} and the teacher {base_path} have different architectures: {'; '.join(differ)}")


_Plan = list[tuple[_Group, list[_Entry], list[torch.dtype]]]


def _plan(source: TensorSource, cfg: VideoDiTConfig, key_style: str, rank: int | None,
          dtype: torch.dtype | None) -> _Plan:
    """Per conversion group of the target layout: what each of its tensors becomes, and in which dtype."""
    family = family_of_config(cfg).name
    layout = LAYOUTS[family if key_style == "official" else f"{family}-diffusers"]
    groups = _groups(invert(layout.rules), source, cfg, None)
    tables = {f"{name}.weight" for name, m in meta_model(cfg).named_modules() if isinstance(m, torch.nn.Embedding)}
    linears = {n.removesuffix(".weight") for g in groups for n, _, shape in g.metas
               if n.endswith(".weight") and len(shape) == 2 and not set(g.src) & tables}
    return [(g, [_plan_entries(n, shape, family, key_style, rank, linears) for n, _, shape in g.metas],
             [dtype or d for _, d, _ in g.metas]) for g in groups]


def _metas(plans: _Plan, family: str, key_style: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    return [m for _, entries, want in plans for e, d in zip(entries, want, strict=True)
            for m in _tensors(e, KEY_STYLES[key_style], key_style, family, d)]


def lora_file_layout(cfg: VideoDiTConfig, key_style: str, rank: int | None) -> list[tuple[str, torch.dtype,
                                                                                          tuple[int, ...]]]:
    """Names, dtypes and shapes of the tensors a LoRA export of a model of ``cfg`` holds (worked out on
    the meta device: usable for a 14B architecture without its weights)."""
    metas = {k: torch.empty(s, device="meta") for k, s in expected_shapes(cfg).items()}
    return _metas(_plan(MemorySource(Path("<meta>"), metas), cfg, key_style, rank, None),
                  family_of_config(cfg).name, key_style)


BASE_DIGEST = "pose_mcore.base_model_blake2b"
"""Header key of the digest of the base model's tensors (see :func:`base_digest`)."""


def _combined(digests: dict[str, str]) -> str:
    """One digest of a checkpoint's tensors from theirs, by name: the same whatever order they were read in."""
    return hashlib.blake2b("".join(f"{k}:{digests[k]}\n" for k in sorted(digests)).encode(),
                           digest_size=16).hexdigest()


def base_digest(base: Path) -> str:
    """The digest a LoRA export records of the teacher checkpoint at ``base`` (its tensors streamed one at a
    time), to check a base against a LoRA."""
    source = detect(Path(base)).source
    return _combined({k: tensor_digest(source.get(k)) for k in source.keys()})


PEFT_METADATA = "lora_adapter_metadata"
"""The header key diffusers reads a LoRA's peft configuration from (``LORA_ADAPTER_METADATA_KEY``)."""


def peft_config(metas: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> dict[str, object]:
    """diffusers' LoRA configuration of a diffusers-key export, as its own ``save_lora_adapter`` writes it
    (``transformer.`` before each key): every layer's rank, and alpha equal to it (scale 1). Written out, since a
    ``--rank full`` export has each layer's own full rank, and diffusers releases before their mixed-rank fix
    scale the layers of another rank by the most common rank's alpha instead."""
    ranks = {n.removeprefix("transformer.").removesuffix(".lora_A.weight"): shape[0]
             for n, _, shape in metas if n.endswith(".lora_A.weight")}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    pattern = {k: v for k, v in sorted(ranks.items()) if v != r}
    config = {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
              "target_modules": sorted(ranks), "use_dora": False,
              "lora_bias": any(n.endswith(".lora_B.bias") for n, _, _ in metas)}
    return {f"transformer.{k}": v for k, v in config.items()}


def export_lora(src: Path, base: Path, dst: Path, rank: int | None, key_style: str = "official",
                dtype: torch.dtype | None = None, overwrite: bool = False, device: str = "cpu",
                expert: str = "high") -> LoRAExport:
    """Write the generator at ``src`` as a LoRA against the teacher at ``base`` (both pose_mcore
    checkpoints of one architecture) to the single file ``dst``; ``rank=None`` exports it exactly. A two-expert
    teacher (Wan2.2-A14B): against its ``expert`` (the one the generator started from, ``generator_init``),
    which diffusers' ``load_lora_weights`` loads into ``transformer`` (high) or, with ``load_into_transformer_2``,
    ``transformer_2`` (low)."""
    src, base, dst = Path(src), Path(base), Path(dst)
    if key_style not in KEY_STYLES:
        raise CheckpointError(f"unknown LoRA key style {key_style!r}; known: {', '.join(KEY_STYLES)}")
    if rank is not None and rank < 1:
        raise CheckpointError(f"--rank {rank}: expected a positive integer or 'full'")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: a LoRA is written to one .safetensors file")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    gen, teacher = detect(src), detect(base)
    base_name = f"{teacher.variant} ({base.name}"
    if getattr(teacher.config, "boundary", None) is not None and teacher.layout == "pose":
        if expert not in EXPERTS:
            raise CheckpointError(f"--expert {expert!r}: a two-expert teacher's expert is one of {', '.join(EXPERTS)}")
        teacher = teacher.expert(expert)
        base_name += f", {expert}-noise expert"
    _same_model(gen, teacher, src, base)
    family, cfg = gen.family, gen.config
    prefix = KEY_STYLES[key_style]
    plans = _plan(gen.source, cfg, key_style, rank, dtype)
    metas = _metas(plans, family, key_style)
    shown_rank = "full" if rank is None else str(rank)
    metadata = {"format": "pt", "pose_mcore.kind": "lora", "pose_mcore.family": family,
                "pose_mcore.base_model": f"{base_name})", BASE_DIGEST: "0" * 32,
                "pose_mcore.rank": shown_rank,
                "pose_mcore.alpha": "equal to each layer's rank (scale 1)", "pose_mcore.key_style": key_style,
                "pose_mcore.architecture": json.dumps(cfg.architecture())}
    if key_style == "diffusers":
        metadata[PEFT_METADATA] = json.dumps(peft_config(metas))
    report = LoRAExport(dst, shown_rank, family)
    with atomic_destination(dst, overwrite) as tmp:
        writer = SafetensorsStreamWriter(tmp, metas, metadata)
        digests: dict[str, str] = {}
        for g, entries, want in plans:
            gen_out = g.rule.fn([gen.source.get(k) for k in g.src], cfg)
            base_in = [teacher.source.get(k) for k in g.src]
            digests.update({k: tensor_digest(t) for k, t in zip(g.src, base_in, strict=True)})
            base_out = g.rule.fn(base_in, cfg)
            for e, d, w_gen, w_base in zip(entries, want, gen_out, base_out, strict=True):
                delta = w_gen.float() - w_base.float()
                names = iter(n for n, _, _ in _tensors(e, prefix, key_style, family, d))
                if e.kind == "lora":
                    b, a = _factor(delta, e.rank, rank is None or e.rank >= min(e.shape), device)
                    residual = delta - b @ a
                    report.lora_errors[_layer_type(e.module)].append(
                        (e.rank, _relative(residual, delta), _relative(residual, w_gen.float())))
                    if e.doubled:
                        b, a = torch.cat([b / 2, b / 2], dim=1), torch.cat([a, a])
                    writer.write(next(names), a.to(d).contiguous())
                    writer.write(next(names), b.to(d).contiguous())
                    if _has_alpha(e, key_style, family):
                        writer.write(next(names), torch.tensor(float(a.shape[0]), dtype=torch.float32))
                    continue
                if not e.carried:
                    table = report.skipped if e.kind == "skip" else report.diffs
                    table[_layer_type(e.name)].append(_relative(delta, w_gen.float()))
                if e.kind != "skip":
                    writer.write(next(names), delta.to(d))
            del gen_out, base_out
        writer.set_metadata(BASE_DIGEST, _combined(digests))
        writer.close()
    return report


def parse_rank(text: str) -> int | None:
    """``--rank`` value: a positive integer, or ``full`` (None) for an exact export."""
    if text.strip().lower() == "full":
        return None
    try:
        value = int(text)
    except ValueError as e:
        raise CheckpointError(f"--rank {text!r}: expected a positive integer or 'full'") from e
    if value < 1:
        raise CheckpointError(f"--rank {text!r}: expected a positive integer or 'full'")
    return value

