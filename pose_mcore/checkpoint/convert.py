"""Import, export and inspect checkpoints: Wan, HunyuanVideo and HunyuanVideo-1.5, official and diffusers
layouts, to and from pose_mcore's own (TP-independent names, sharded safetensors, config.json).

Conversion streams: tensors are read one group at a time (a rename, or the parts of a fused
tensor), written straight into the output shard, and released. Output shapes are worked out on
the meta device first, so every shard's header is known before its data is written. Destinations
are written to a temporary path and renamed at the end.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pose_mcore.checkpoint import configs, fp8
from pose_mcore.checkpoint.fp8 import Fp8Dequantized
from pose_mcore.checkpoint.io import (
    CheckpointError,
    Prefixed,
    PrefixStripped,
    SafetensorsStreamWriter,
    TensorSource,
    atomic_destination,
    open_source,
    safetensors_metadata,
)
from pose_mcore.checkpoint.layouts import hunyuan as hunyuan_layout
from pose_mcore.checkpoint.layouts import hunyuan15 as hunyuan15_layout
from pose_mcore.checkpoint.layouts import wan as wan_layout
from pose_mcore.checkpoint.layouts.rules import Rule, invert, plan
from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.models.experts import EXPERTS
from pose_mcore.models.registry import FAMILIES, family_of_config

FORMAT = "pose_mcore"
FORMAT_VERSION = 1
POSE_INDEX = "model.safetensors.index.json"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 * 2**30
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Layout:
    name: str
    family: str
    rules: list[Rule]
    """From this layout to pose_mcore's names."""


LAYOUTS: dict[str, Layout] = {
    "wan": Layout("wan", "wan", wan_layout.ORIGINAL),
    "wan-diffusers": Layout("wan-diffusers", "wan", wan_layout.DIFFUSERS),
    "hunyuan": Layout("hunyuan", "hunyuan", hunyuan_layout.ORIGINAL),
    "hunyuan-diffusers": Layout("hunyuan-diffusers", "hunyuan", hunyuan_layout.DIFFUSERS),
    "hunyuan15": Layout("hunyuan15", "hunyuan15", hunyuan15_layout.ORIGINAL),
    "hunyuan15-diffusers": Layout("hunyuan15-diffusers", "hunyuan15", hunyuan15_layout.DIFFUSERS),
}
_ORIGINAL_MARKERS = {"wan": "blocks.0.self_attn.q.weight", "hunyuan": "double_blocks.0.img_attn_qkv.weight",
                     "hunyuan15": "double_blocks.0.img_attn_q.weight"}
_DIFFUSERS_CLASSES = {"WanTransformer3DModel": "wan", "HunyuanVideoTransformer3DModel": "hunyuan",
                      "HunyuanVideo15Transformer3DModel": "hunyuan15"}
_COMFY_PREFIX = "model.diffusion_model."


@dataclass
class Detected:
    """What a source checkpoint is."""

    layout: str  # a key of LAYOUTS, or "pose"
    family: str
    source: TensorSource
    config: VideoDiTConfig
    notes: list[str]
    experts: dict[str, Detected] | None = None
    """A two-expert model's folders (Wan2.2-A14B), by expert name; ``source`` then holds both under ``high.`` /
    ``low.`` and ``config`` has the boundary."""

    @property
    def variant(self) -> str:
        return configs.matching_preset(self.config) or "custom"

    def expert(self, name: str) -> Detected:
        """One expert (``high`` or ``low``) of a two-expert checkpoint, as a one-model checkpoint: its tensors
        without their prefix, the config without the boundary."""
        return dataclasses.replace(self, source=PrefixStripped(self.source, f"{name}.", only=True),
                                   config=dataclasses.replace(self.config, boundary=None), experts=None)


EXPERT_FOLDERS = {"official": ("high_noise_model", "low_noise_model"), "diffusers": ("transformer", "transformer_2")}
"""Where a two-expert model (Wan2.2-A14B) keeps its experts, high-noise first: the official folder, a diffusers
pipeline folder (whose ``model_index.json`` has the ``boundary_ratio``)."""


def expert_folders(src: Path) -> tuple[str, dict[str, Path]] | None:
    """The kind (a key of :data:`EXPERT_FOLDERS`) and the experts' folders of a two-expert model folder; None
    for anything else."""
    for kind, names in EXPERT_FOLDERS.items():
        folders = {name: src / sub for name, sub in zip(EXPERTS, names, strict=True)}
        if all(f.is_dir() for f in folders.values()):
            return kind, folders
    return None


def _boundary(src: Path, kind: str, single: VideoDiTConfig, overrides: dict[str, Any]) -> tuple[float, str]:
    """A two-expert folder's boundary and where it came from: ``--set boundary=``, the diffusers folder's
    ``model_index.json``, or (the official folders record none) the preset of the same architecture."""
    if overrides.get("boundary") is not None:
        return overrides["boundary"], "--set"
    if kind == "diffusers":
        index = src / "model_index.json"
        ratio = _read_json(index).get("boundary_ratio") if index.is_file() else None
        if ratio is None:
            raise CheckpointError(f"{index}: no boundary_ratio for the two experts (transformer, transformer_2); "
                                  "pass --set boundary=R")
        return float(ratio), "model_index.json's boundary_ratio"
    for boundary in sorted({f["boundary"] for f in FAMILIES["wan"].presets.values() if f.get("boundary") is not None}):
        name = configs.matching_preset(dataclasses.replace(single, boundary=boundary))
        if name is not None:
            return boundary, f"preset {name}"
    raise CheckpointError(f"{src}: the official folders do not record the experts' boundary and no preset has this "
                          "architecture: pass --set boundary=R (Wan2.2-T2V-A14B 0.875, I2V-A14B 0.9)")


def detect_experts(src: Path, family: str | None = None, overrides: dict[str, Any] | None = None,
                   container: str | None = None) -> Detected | None:
    """A two-expert model folder (official ``high_noise_model/`` + ``low_noise_model/``, or a diffusers pipeline
    folder with ``transformer/`` + ``transformer_2/``) as one :class:`Detected`; None if ``src`` is not one."""
    src = Path(src)
    found = expert_folders(src)
    if found is None:
        return None
    kind, folders = found
    single_overrides = {k: v for k, v in (overrides or {}).items() if k != "boundary"}
    experts = {name: detect(folder, family, single_overrides, container) for name, folder in folders.items()}
    high, low = experts["high"], experts["low"]
    if high.family != "wan" or low.family != "wan":
        raise CheckpointError(f"{src}: two experts are a Wan2.2 model; found {high.family} and {low.family}")
    if high.config.architecture() != low.config.architecture():
        differ = sorted(k for k, v in high.config.architecture().items() if low.config.architecture()[k] != v)
        raise CheckpointError(f"{src}: the experts {folders['high'].name} and {folders['low'].name} differ in "
                              f"{differ}")
    boundary, origin = _boundary(src, kind, high.config, overrides or {})
    cfg = configs.make_config("wan", {**high.config.architecture(), "boundary": boundary})
    notes = [f"two experts: high noise {folders['high'].name}/, low noise {folders['low'].name}/; boundary {boundary} "
             f"(from {origin})"] + [f"{name}: {n}" for name, d in experts.items() for n in d.notes]
    source = Prefixed(src, {f"{name}.": d.source for name, d in experts.items()})
    return Detected(high.layout, "wan", source, cfg, notes, experts)


# --- reading ---------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> architecture overrides (ints, floats, booleans, None, comma tuples)."""
    def value(text: str) -> Any:
        if "," in text:
            return tuple(value(t) for t in text.split(","))
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return {"true": True, "false": False, "none": None}.get(text.lower(), text)

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CheckpointError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        out[key.strip()] = value(text.strip())
    return out


def detect(src: Path, family: str | None = None, overrides: dict[str, Any] | None = None,
           container: str | None = None) -> Detected:
    """Work out the layout, family and architecture of a checkpoint from its files and tensor shapes."""
    src = Path(src)
    overrides = overrides or {}
    notes: list[str] = []
    cfg_file = src / "config.json" if src.is_dir() else None
    j = _read_json(cfg_file) if cfg_file is not None and cfg_file.is_file() else {}
    source = open_source(src, container)
    if Fp8Dequantized.wraps(source):
        source = Fp8Dequantized(source)
        notes.append("fp8 tensors read as fp32 (times their scale_weight where the file has one)")
    if j.get("format") == FORMAT:
        layout, fam = "pose", j["family"]
        cfg = configs.make_config(fam, {**j["architecture"], **overrides})
    elif j.get("_class_name") in _DIFFUSERS_CLASSES:
        fam = _DIFFUSERS_CLASSES[j["_class_name"]]
        layout = f"{fam}-diffusers"
        cfg = configs.from_diffusers_config(fam, j)
        if overrides:
            cfg = configs.make_config(fam, {**cfg.architecture(), **overrides})
    else:
        keys = set(source.keys())
        if any(k.startswith(_COMFY_PREFIX) for k in keys):
            source = PrefixStripped(source, _COMFY_PREFIX)
            keys = set(source.keys())
            notes.append(f"stripped the key prefix {_COMFY_PREFIX!r}")
        found = [f for f, marker in _ORIGINAL_MARKERS.items() if marker in keys]
        if not found:
            raise CheckpointError(f"{src}: unknown layout: no config.json of a known kind and none of the tensors "
                                  f"{sorted(_ORIGINAL_MARKERS.values())} (first keys: {sorted(keys)[:8]})")
        fam, layout = found[0], found[0]
        arch, shape_notes = configs.official_arch_from_shapes(fam, source)
        notes += shape_notes
        written = safetensors_metadata(src).get(ARCHITECTURE_KEY) if src.suffix == ".safetensors" else None
        if written is not None:  # pose-convert export wrote it: what the shapes cannot say (heads) included
            arch.update(json.loads(written))
            notes = [n for n in notes if n not in shape_notes] + ["architecture from the file's header (pose-convert "
                                                                  "export)"]
        elif fam == "wan" and j.get("_class_name") == "WanModel":
            arch.update(configs.from_official_wan_config(j))
        elif fam == "wan" and "num_attention_heads" not in overrides:
            arch["num_attention_heads"], note = configs.infer_wan_heads(arch)
            notes.append(note)
        elif fam == "hunyuan15":
            notes += _hunyuan15_official_fields(src, j, arch)
        arch.update(overrides)
        notes = [n for n in notes if not any(f"--set {k}=" in n for k in overrides)]
        if fam in ("hunyuan", "hunyuan15") and "rope_axes_dim" not in arch:
            raise CheckpointError(f"{src}: " + shape_notes[0])
        cfg = configs.make_config(fam, arch)
    if family is not None and family != fam:
        raise CheckpointError(f"{src}: --family {family} but the checkpoint is a {fam} model ({layout} layout)")
    return Detected(layout, fam, source, cfg, notes)


def _hunyuan15_official_fields(src: Path, j: dict[str, Any], arch: dict[str, Any]) -> list[str]:
    """Fill ``arch`` with what an official HunyuanVideo-1.5 folder states beside its shapes: its config.json, else
    the variant folder's name (``480p_t2v``); notes on what had to be assumed."""
    if j.get("_class_name") == configs.OFFICIAL_HUNYUAN15_CLASS:
        arch.update(configs.from_official_hunyuan15_config(j))
    found = configs.hunyuan15_task_from_folder(src.name if src.is_dir() else src.parent.name)
    arch.update({k: v for k, v in found.items() if k not in arch})
    if "task_type" in arch and "target_size" in arch:
        return []
    return ["the task and resolution are neither in a config.json nor in the folder's name (480p_t2v): assuming "
            "i2v at 480p (--set task_type=t2v, --set target_size=960 for 720p)"]


def meta_model(cfg: VideoDiTConfig) -> torch.nn.Module:
    """The whole (TP=1) model of ``cfg``'s architecture on the meta device: names, shapes and module types, no
    memory."""
    from megatron.core import parallel_state

    from pose_mcore.parallel.state import initialize_parallel

    if not parallel_state.model_parallel_is_initialized():
        initialize_parallel(1)
    single = configs.make_config(family_of_config(cfg).name, cfg.architecture(), perform_initialization=False)
    with torch.device("meta"):
        return family_of_config(cfg).build(single)


def expected_shapes(cfg: VideoDiTConfig) -> dict[str, tuple[int, ...]]:
    """pose_mcore's parameter names and whole-tensor shapes for ``cfg``."""
    return {k: tuple(v.shape) for k, v in meta_model(cfg).state_dict().items() if not k.endswith("_extra_state")}


# --- writing ---------------------------------------------------------------------------------------

@dataclass
class _Group:
    rule: Rule
    src: list[str]
    dst: list[str]
    metas: list[tuple[str, torch.dtype, tuple[int, ...]]]

    @property
    def nbytes(self) -> int:
        return sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for _, d, s in self.metas)


def _groups(rules: Sequence[Rule], source: TensorSource, cfg: VideoDiTConfig, dtype: torch.dtype | None
            ) -> list[_Group]:
    p = plan(rules, source.keys())
    if p.unplaced or p.missing:
        raise CheckpointError(f"{source.path}: keys the layout cannot place: {p.unplaced[:20]}"
                              f"{' ...' if len(p.unplaced) > 20 else ''}; keys a group lacks: {p.missing[:20]}")
    groups = []
    for rule, src, dst in p.groups:
        metas_in = [torch.empty(source.shape(k), dtype=source.dtype(k), device="meta") for k in src]
        outs = rule.fn(metas_in, cfg)
        groups.append(_Group(rule, src, dst, [(n, _cast_dtype(t.dtype, dtype), tuple(t.shape))
                                              for n, t in zip(dst, outs, strict=True)]))
    return groups


def _cast_dtype(have: torch.dtype, want: torch.dtype | None) -> torch.dtype:
    return want if want is not None and have.is_floating_point else have


def _check_against_model(groups: Sequence[_Group], cfg: VideoDiTConfig, src: Path) -> None:
    want = expected_shapes(cfg)
    have = {n: s for g in groups for n, _, s in g.metas}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{src}: does not fit the detected {type(cfg).__name__}: missing {missing[:20]}; "
                              f"unexpected {unexpected[:20]}")
    for name, shape in have.items():
        if shape != want[name]:
            raise CheckpointError(f"{src}: tensor for {name!r} has shape {shape} but the detected config needs "
                                  f"{want[name]}")


def _write_shards(groups: Sequence[_Group], source: TensorSource, cfg: Any, dtype: torch.dtype | None,
                  folder: Path, name_fmt: str, single_name: str | None, index_name: str | None, shard_bytes: int,
                  desc: str, metadata: dict[str, str] | None = None) -> list[str]:
    """Write the groups' outputs as safetensors shards (``name_fmt.format(i, n)``), streaming; ``metadata`` in
    each shard's header."""
    shards: list[list[_Group]] = [[]]
    size = 0
    for g in groups:
        if shards[-1] and size + g.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(g)
        size += g.nbytes
    n = len(shards)
    names = [single_name] if n == 1 and single_name else [name_fmt.format(i + 1, n) for i in range(n)]
    weight_map, total = {}, 0
    bar = tqdm(total=sum(g.nbytes for g in groups), unit="B", unit_scale=True, desc=desc, leave=False,
               disable=None)  # no bar without a terminal
    for shard, fname in zip(shards, names, strict=True):
        writer = SafetensorsStreamWriter(folder / fname, [m for g in shard for m in g.metas], metadata)
        for g in shard:
            outs = g.rule.fn([source.get(k) for k in g.src], cfg)
            for (name, want_dtype, _), tensor in zip(g.metas, outs, strict=True):
                writer.write(name, tensor.to(want_dtype))
                weight_map[name] = fname
            total += g.nbytes
            bar.update(g.nbytes)
            del outs
        writer.close()
    bar.close()
    if index_name is not None and (n > 1 or single_name is None):
        (folder / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2))
    return names


def _prefixed(group: _Group, prefix: str) -> _Group:
    """``group`` reading and writing names under ``prefix`` (one expert of a two-expert model)."""
    return _Group(group.rule, [prefix + k for k in group.src], [prefix + k for k in group.dst],
                  [(prefix + n, d, s) for n, d, s in group.metas])


def _identity_rules(keys: Sequence[str]) -> list[Rule]:
    return [Rule((k,), (k,)) for k in keys]


def _write_pose_config(folder: Path, family: str, cfg: VideoDiTConfig, converted_from: str) -> None:
    (folder / "config.json").write_text(json.dumps(
        {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family, "architecture": cfg.architecture(),
         "converted_from": converted_from}, indent=2))


def _write_pose(tmp: Path, groups: Sequence[_Group], source: TensorSource, cfg: VideoDiTConfig,
                dtype: torch.dtype | None, shard_bytes: int, family: str, converted_from: str, desc: str) -> None:
    tmp.mkdir()
    _write_shards(groups, source, cfg, dtype, tmp, "model-{:05d}-of-{:05d}.safetensors", None, POSE_INDEX,
                  shard_bytes, desc)
    _write_pose_config(tmp, family, cfg, converted_from)


def finish_pose_checkpoint(folder: Path, shard: str, cfg: VideoDiTConfig, converted_from: str) -> None:
    """Write the index and ``config.json`` of a pose_mcore checkpoint whose tensors are all in ``folder/shard``
    (written already, e.g. streamed by the trainer)."""
    source = open_source(folder / shard)
    (folder / POSE_INDEX).write_text(json.dumps({"metadata": {"total_size": source.nbytes()},
                                                 "weight_map": {k: shard for k in source.keys()}}, indent=2))
    _write_pose_config(folder, family_of_config(cfg).name, cfg, converted_from)


def import_checkpoint(src: Path, dst: Path, family: str | None = None, dtype: str = "keep",
                      overrides: dict[str, Any] | None = None, overwrite: bool = False,
                      shard_bytes: int = DEFAULT_SHARD_BYTES, container: str | None = None,
                      tp: int | None = None) -> Detected:
    """Convert a Wan, HunyuanVideo or HunyuanVideo-1.5 checkpoint (any supported layout) into pose_mcore's layout
    at ``dst`` (checking first, if ``tp`` is given, that the model splits over that many tensor-parallel ranks)."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    found = detect_experts(src, family, overrides, container)
    if found is None and (overrides or {}).get("boundary") is not None:
        raise CheckpointError(f"{src}: --set boundary is for a two-expert model (a folder with high_noise_model/ and "
                              "low_noise_model/, or a diffusers folder with transformer/ and transformer_2/); this "
                              "is one model")
    found = found or detect(src, family, overrides, container)
    if tp is not None:
        configs.make_config(found.family, found.config.architecture(), tensor_model_parallel_size=tp)
    groups = []
    for name, part in (found.experts or {"": found}).items():
        rules = _identity_rules(part.source.keys()) if part.layout == "pose" else LAYOUTS[part.layout].rules
        part_groups = _groups(rules, part.source, part.config, DTYPES[dtype])
        _check_against_model(part_groups, part.config, part.source.path)
        groups += [_prefixed(g, f"{name}.") for g in part_groups] if name else part_groups
    with atomic_destination(dst, overwrite) as tmp:
        _write_pose(tmp, groups, found.source, found.config, DTYPES[dtype], shard_bytes, found.family, found.layout,
                    "import")
    return found


ARCHITECTURE_KEY = "pose_mcore.architecture"
"""Header key of a single official-layout file's architecture (JSON), what import needs besides the shapes."""


def _architecture_metadata(cfg: VideoDiTConfig) -> dict[str, str]:
    return {"format": "pt", "pose_mcore.family": family_of_config(cfg).name,
            ARCHITECTURE_KEY: json.dumps(cfg.architecture())}


def _write_fp8(groups: Sequence[_Group], source: TensorSource, cfg: VideoDiTConfig, path: Path) -> None:
    """One safetensors file in ComfyUI's scaled-fp8 form (see :mod:`pose_mcore.checkpoint.fp8`)."""
    metas: list[tuple[str, torch.dtype, tuple[int, ...]]] = [(fp8.MARKER, fp8.FP8, (0,))]
    for g in groups:
        for name, _, shape in g.metas:
            if fp8.quantized(name, shape):
                metas += [(name, fp8.FP8, shape), (name.removesuffix(".weight") + fp8.SCALE_SUFFIX, torch.float32, ())]
            else:
                metas.append((name, torch.bfloat16, shape))
    writer = SafetensorsStreamWriter(path, metas, {**_architecture_metadata(cfg),
                                                   "pose_mcore.dtype": "fp8 e4m3fn, per-tensor scale"})
    writer.write(fp8.MARKER, torch.empty(0, dtype=fp8.FP8))
    for g in tqdm(groups, desc="export fp8", leave=False, disable=None):
        for (name, _, shape), tensor in zip(g.metas, g.rule.fn([source.get(k) for k in g.src], cfg), strict=True):
            if fp8.quantized(name, shape):
                q, scale = fp8.quantize(tensor)
                writer.write(name, q)
                writer.write(name.removesuffix(".weight") + fp8.SCALE_SUFFIX, scale)
            else:
                writer.write(name, tensor.to(torch.bfloat16))
    writer.close()


def export_checkpoint(src: Path, dst: Path, layout: str, dtype: str = "keep", overwrite: bool = False,
                      shard_bytes: int = DEFAULT_SHARD_BYTES) -> Detected:
    """Write a pose_mcore checkpoint in another layout: a diffusers folder, or the official files
    (``dtype="fp8"``: one official-layout .safetensors file with scaled fp8 block weights)."""
    dst = Path(dst)
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if dtype == "fp8" and (layout.endswith("-diffusers") or dst.suffix != ".safetensors"):
        raise CheckpointError(f"{dst}: --dtype fp8 writes one official-layout .safetensors file (--layout wan, "
                              "hunyuan or hunyuan15, a destination ending in .safetensors), as ComfyUI loads it")
    found = detect(src)
    if found.layout != "pose":
        raise CheckpointError(f"{src}: export reads a pose_mcore checkpoint; this is a {found.layout} one "
                              "(import it first)")
    target = LAYOUTS[layout]
    if target.family != found.family:
        raise CheckpointError(f"{src}: a {found.family} checkpoint cannot be written in the {layout} layout")
    cfg = found.config
    if getattr(cfg, "boundary", None) is not None:
        return _export_experts(found, dst, layout, dtype, overwrite, shard_bytes)
    groups = _groups(invert(target.rules), found.source, cfg, DTYPES.get(dtype))
    with atomic_destination(dst, overwrite) as tmp:
        if dtype == "fp8":
            _write_fp8(groups, found.source, cfg, tmp)
        elif layout.endswith("-diffusers"):
            _write_folder(groups, found.source, cfg, dtype, tmp, configs.to_diffusers_config(cfg), shard_bytes)
        elif dst.suffix == ".safetensors":
            _write_shards(groups, found.source, cfg, DTYPES[dtype], tmp.parent, "", tmp.name, None, 2**62, "export",
                          _architecture_metadata(cfg))
        elif layout == "hunyuan" and dst.suffix in (".pt", ".pth"):
            # A torch pickle is written whole: this holds the model in memory (safetensors output does not).
            state = {}
            for g in groups:
                for (name, want, _), t in zip(g.metas, g.rule.fn([found.source.get(k) for k in g.src], cfg),
                                              strict=True):
                    state[name] = t.to(want).clone()
            torch.save({"module": state}, tmp)
        elif layout == "wan":
            _write_folder(groups, found.source, cfg, dtype, tmp, configs.to_official_wan_config(cfg), shard_bytes)
        elif layout == "hunyuan15":
            _write_folder(groups, found.source, cfg, dtype, tmp, configs.to_official_hunyuan15_config(cfg),
                          shard_bytes)
        else:
            raise CheckpointError(f"{dst}: the hunyuan layout is written to a .pt (as the official "
                                  "mp_rank_00_model_states.pt) or a .safetensors file")
    return found


def _write_folder(groups: Sequence[_Group], source: TensorSource, cfg: VideoDiTConfig, dtype: str, folder: Path,
                  config_json: dict[str, Any], shard_bytes: int) -> None:
    """A diffusers or official Wan model folder: ``diffusion_pytorch_model*.safetensors`` and ``config.json``."""
    folder.mkdir()
    _write_shards(groups, source, cfg, DTYPES[dtype], folder, "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors",
                  "diffusion_pytorch_model.safetensors", DIFFUSERS_INDEX, shard_bytes, "export")
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))


def _export_experts(found: Detected, dst: Path, layout: str, dtype: str, overwrite: bool, shard_bytes: int
                    ) -> Detected:
    """A two-expert checkpoint as the experts' folders (:data:`EXPERT_FOLDERS`: ``transformer/`` and
    ``transformer_2/`` for diffusers, ``high_noise_model/`` and ``low_noise_model/`` for the official layout)."""
    if dtype == "fp8" or dst.suffix:
        raise CheckpointError(f"{dst}: a two-expert checkpoint is written as a folder of the experts' folders; "
                              "fp8 and single files take one model (export the generator, or each expert's folder)")
    target = LAYOUTS[layout]
    kind = "diffusers" if layout.endswith("-diffusers") else "official"
    with atomic_destination(dst, overwrite) as tmp:
        tmp.mkdir()
        for name, sub in zip(EXPERTS, EXPERT_FOLDERS[kind], strict=True):
            part = found.expert(name)
            groups = _groups(invert(target.rules), part.source, part.config, DTYPES.get(dtype))
            config_json = configs.to_diffusers_config(part.config) if kind == "diffusers" else \
                configs.to_official_wan_config(part.config)
            _write_folder(groups, part.source, part.config, dtype, tmp / sub, config_json, shard_bytes)
    return found


def inspect_checkpoint(src: Path, overrides: dict[str, Any] | None = None, container: str | None = None
                       ) -> dict[str, Any]:
    """What a checkpoint is: family, variant, layout, parameter count, dtypes, keys it cannot place."""
    found = detect_experts(src, overrides=overrides, container=container) or detect(src, overrides=overrides,
                                                                                     container=container)
    keys = found.source.keys()
    unplaced, missing = [], []
    for name, part in (found.experts or {"": found}).items():
        part_keys = part.source.keys()
        p = plan(_identity_rules(part_keys) if part.layout == "pose" else LAYOUTS[part.layout].rules, part_keys)
        prefix = f"{name}." if name else ""
        unplaced += [prefix + k for k in p.unplaced]
        missing += [prefix + k for k in p.missing]
    params = sum(torch.Size(found.source.shape(k)).numel() for k in keys)
    dtypes = sorted({str(found.source.dtype(k)).removeprefix("torch.") for k in keys})
    boundary = getattr(found.config, "boundary", None)
    return {"path": str(src), "family": found.family, "variant": found.variant, "layout": found.layout,
            "experts": "one model" if boundary is None else f"high noise (t >= {boundary}), low noise (t < {boundary})",
            "parameters": params, "dtypes": dtypes, "tensors": len(keys), "unplaced_keys": unplaced,
            "missing_keys": missing, "architecture": found.config.architecture(), "notes": found.notes}
