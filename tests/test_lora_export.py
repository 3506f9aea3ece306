"""Exports users load: the generator as a LoRA against its teacher (diffusers loads it with its own LoRA
code and reproduces the generator; ComfyUI's arithmetic on the official keys gives it back exactly;
the keys fit diffusers' converters at 14B/13B shapes), and fp8 single files (written, re-imported,
within the stated bound; an outside fp8 file imports). Bad input: exit 2, a message, nothing written."""

from __future__ import annotations

import pytest
import torch
from checkpoint_fixtures import wan_original_state
from conftest import assert_close_rel
from hunyuan15_reference import diffusers_hunyuan15, hunyuan15_inputs
from hunyuan_reference import diffusers_hunyuan, hunyuan_inputs
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from wan_reference import diffusers_wan, wan_inputs

from pose_mcore.checkpoint import fp8
from pose_mcore.checkpoint.command import main
from pose_mcore.checkpoint.configs import to_diffusers_config
from pose_mcore.checkpoint.load import load_model
from pose_mcore.checkpoint.lora_export import BASE_DIGEST, base_digest, lora_file_layout
from pose_mcore.config.hunyuan import hunyuan_config
from pose_mcore.config.wan import wan_config

HUNYUAN_ROPE = ["--set", "rope_axes_dim=2,2,4"]


def _perturbed(model: torch.nn.Module, seed: int, linears_only: bool) -> torch.nn.Module:
    """A copy of ``model`` as a distilled generator might differ from its teacher: every linear layer's
    weight and bias (``linears_only``), or every parameter, moved by ~5 % of its spread."""
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        chosen = ([p for m in out.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)]
                  if linears_only else list(out.parameters()))
        for p in chosen:
            p.add_(0.05 * (p.std() if p.numel() > 1 else p.abs()).clamp_min(0.02) * torch.randn(p.shape, generator=gen))
    return out


def _import(src, dst, *extra) -> None:
    assert main(["import", "--src", str(src), "--dst", str(dst), *extra]) == 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per family: the diffusers teacher and generators, and their pose_mcore checkpoints."""
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for family, teacher in (("wan", diffusers_wan(i2v=True, seed=0)), ("hunyuan", diffusers_hunyuan("t2v", seed=0)),
                            ("hunyuan15", diffusers_hunyuan15("i2v", seed=0))):
        entry = {"teacher": teacher, "gen_linear": _perturbed(teacher, 1, True), "gen_all": _perturbed(teacher, 2, False)}
        for name, model in list(entry.items()):
            model.save_pretrained(root / f"{family}_{name}_diffusers")
            _import(root / f"{family}_{name}_diffusers", root / f"{family}_{name}")
            entry[f"{name}_path"] = root / f"{family}_{name}"
            entry[f"{name}_diffusers"] = root / f"{family}_{name}_diffusers"
        out[family] = entry
    return out


def _inputs(family: str) -> dict[str, torch.Tensor]:
    if family == "hunyuan15":
        return hunyuan15_inputs("i2v", 1, 2, 4, 6, [4], [2], seed=5)
    return wan_inputs(True, 1, 2, 4, 6, seed=5) if family == "wan" else hunyuan_inputs("t2v", 1, 2, 4, 6, [4], seed=5)


def _export(m, gen: str, dst, rank: str, keys: str, *extra: str) -> int:
    return main(["export", "--layout", "lora", "--src", str(m[f"{gen}_path"]), "--base", str(m["teacher_path"]),
                 "--dst", str(dst), "--rank", rank, "--lora-keys", keys, *extra])


def _diffusers_with_lora(family: str, m, path) -> torch.nn.Module:
    """The teacher in diffusers with the LoRA file loaded as diffusers' pipelines load it:
    ``<Pipeline>.lora_state_dict`` (which converts non-diffusers keys) then ``load_lora_adapter``. The
    HunyuanVideo-1.5 pipelines have no LoRA loader: the file goes to the transformer's own ``load_lora_adapter``."""
    from diffusers import (
        HunyuanVideo15Transformer3DModel,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
        WanPipeline,
        WanTransformer3DModel,
    )

    if family == "hunyuan15":
        cls, state = HunyuanVideo15Transformer3DModel, load_file(path)
    else:
        pipe, cls = (WanPipeline, WanTransformer3DModel) if family == "wan" else (HunyuanVideoPipeline,
                                                                                   HunyuanVideoTransformer3DModel)
        state = pipe.lora_state_dict(str(path.parent), weight_name=path.name)
    model = cls.from_pretrained(m["teacher_diffusers"]).eval()
    model.load_lora_adapter(dict(state), prefix="transformer", adapter_name="pose")
    modules = {k.removeprefix("transformer.").split(".lora_")[0] for k in state if ".lora_" in k}
    adapted = {n for n, mod in model.named_modules() if hasattr(mod, "lora_A") and "pose" in mod.lora_A}
    assert modules == adapted, f"LoRA keys diffusers did not place: {sorted(modules ^ adapted)[:10]}"
    return model


def _rel(model: torch.nn.Module, reference: torch.nn.Module, family: str) -> float:
    inputs = _inputs(family)
    with torch.no_grad():
        out, ref = model(**inputs).sample, reference(**inputs).sample
    return ((out - ref).abs().max() / ref.abs().max()).item()


CASES = [("wan", "official"), ("wan", "diffusers"), ("hunyuan", "diffusers"), ("hunyuan15", "diffusers")]


@pytest.mark.parametrize(("family", "keys"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_full_rank_lora_reproduces_the_generator_in_diffusers(models, tmp_path, family, keys, capsys):
    m = models[family]
    path = tmp_path / "lora.safetensors"
    assert _export(m, "gen_linear", path, "full", keys) == 0
    out = capsys.readouterr().out
    assert "wrote a rank-full LoRA" in out
    assert "so the teacher with this LoRA is the generator" in out  # only linear layers (and their biases) moved
    model = _diffusers_with_lora(family, m, path)
    assert _rel(model, m["teacher"], family) > 1e-2  # the generator is far from its teacher
    err = _rel(model, m["gen_linear"], family)
    assert err <= 1e-4, f"{family}/{keys}: diffusers with the LoRA is {err:.3g} from the generator"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["pose_mcore.rank"] == "full" and meta["pose_mcore.key_style"] == keys
    assert "pose_mcore.alpha" in meta
    # the base by name and digest, never by a local path (a published file would publish the file system)
    assert meta["pose_mcore.base_model"].endswith(f"({m['teacher_path'].name})")
    assert str(m["teacher_path"].resolve().parent) not in str(meta)
    assert meta[BASE_DIGEST] == base_digest(m["teacher_path"]) != base_digest(m["gen_linear_path"])


def test_rank_r_error_is_reported_and_falls_with_r(models, tmp_path, capsys):
    m = models["wan"]
    errors, reported = [], []
    for rank in ("1", "4", "8"):
        path = tmp_path / f"r{rank}.safetensors"
        assert _export(m, "gen_linear", path, rank, "official") == 0
        table = capsys.readouterr().out
        row = next(line for line in table.splitlines() if line.startswith("blocks.*.self_attn.q"))
        reported.append(float(row.split()[3]))
        errors.append(_rel(_diffusers_with_lora("wan", m, path), m["gen_linear"], "wan"))
    assert reported[0] > reported[1] > reported[2] >= 0 and reported[0] > 0.1
    assert errors[0] > errors[1] > errors[2], errors


def _comfy_apply(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's arithmetic for LoRA files: W += alpha / rank * B @ A (alpha defaults to the rank),
    W += diff, bias += diff_b; for official keys under ``diffusion_model.``."""
    lora = {k.removeprefix("diffusion_model."): v for k, v in lora.items()}
    out, used = {}, set()
    for key, w in base.items():
        module = key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key
        w = w.clone().float()
        if key.endswith(".bias"):
            parts = [f"{module}.diff_b"]
        elif key.endswith(".weight"):
            parts = [f"{module}.diff"]
            if f"{module}.lora_A.weight" in lora:
                a, b = lora[f"{module}.lora_A.weight"].float(), lora[f"{module}.lora_B.weight"].float()
                alpha = lora.get(f"{module}.alpha", torch.tensor(float(a.shape[0]))).item()
                w += alpha / a.shape[0] * (b @ a)
                used |= {f"{module}.lora_A.weight", f"{module}.lora_B.weight", f"{module}.alpha"}
        else:
            parts = [f"{key}.diff"]
        for p in parts:
            if p in lora:
                w += lora[p].float()
                used.add(p)
        out[key] = w
    assert set(lora) <= used, f"entries that name no tensor: {sorted(set(lora) - used)[:10]}"
    return out


def test_official_keys_give_the_generator_back_with_comfyui_arithmetic(models, tmp_path, capsys):
    """Every parameter differs (norms, modulation tables, patch embedding too): the diff entries carry
    what a LoRA cannot, and applying the file to the teacher's official weights gives the generator's. The export
    tells a diffusers user that diffusers drops them, by how much those tensors change, and what to use instead."""
    for family in ("wan", "hunyuan", "hunyuan15"):
        m = models[family]
        path = tmp_path / f"{family}.safetensors"
        assert _export(m, "gen_all", path, "full", "official") == 0
        note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("in diffusers: ")]
        assert len(note) == 1 and "drops these diff / diff_b entries" in note[0], note
        assert note[0].endswith(f"for the generator itself: pose-convert export --layout {family}-diffusers "
                                "(full weights), or train with phase1.generator_params=linears "
                                "phase2.generator_params=linears")
        official = {}
        for name in ("teacher", "gen_all"):
            dst = tmp_path / f"{family}_{name}.safetensors"
            assert main(["export", "--src", str(m[f"{name}_path"]), "--dst", str(dst), "--layout", family]) == 0
            official[name] = load_file(dst)
        applied = _comfy_apply(official["teacher"], load_file(path))
        for key, want in official["gen_all"].items():
            assert_close_rel(applied[key], want.float(), 1e-5, f"{family}/{key}")


def _check_keys_fit(converted: dict[str, torch.Tensor], model: torch.nn.Module, what: str) -> set[str]:
    """Every converted LoRA key lands on a linear of the diffusers model with fitting shapes."""
    modules = dict(model.named_modules())
    placed = set()
    for key, t in converted.items():
        if ".lora_" not in key:
            continue
        name, part = key.removeprefix("transformer.").split(".lora_")
        layer = modules.get(name)
        assert isinstance(layer, torch.nn.Linear), f"{what}: {key} names no linear layer"
        if part == "A.weight":
            assert t.shape[1] == layer.in_features, f"{what}: {key} {tuple(t.shape)}"
        elif part == "B.weight":
            assert t.shape[0] == layer.out_features, f"{what}: {key} {tuple(t.shape)}"
        else:
            assert part == "B.bias" and t.shape == (layer.out_features,), f"{what}: {key}"
        placed.add(name)
    return placed


def _meta_state(layout) -> dict[str, torch.Tensor]:
    # scalars (alpha) are real: the converter reads them with .item()
    return {n: torch.tensor(4.0) if not shape else torch.empty(shape, dtype=d, device="meta") for n, d, shape in layout}


def test_official_keys_fit_diffusers_converters_at_full_size():
    """Wan2.1-I2V-14B and HunyuanVideo-I2V 13B (on the meta device): diffusers' converters for
    non-diffusers LoRAs take every factor, every linear gets one, and what they leave out is only
    the diff entries (Wan: they are read and skipped; HunyuanVideo: no rule reads them)."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel
    from diffusers.loaders.lora_conversion_utils import (
        _convert_hunyuan_video_lora_to_diffusers,
        _convert_non_diffusers_wan_lora_to_diffusers,
    )

    for cfg, cls, convert in ((wan_config("wan2.1-i2v-14b"), WanTransformer3DModel,
                               _convert_non_diffusers_wan_lora_to_diffusers),
                              (hunyuan_config("hunyuan-i2v-13b"), HunyuanVideoTransformer3DModel,
                               _convert_hunyuan_video_lora_to_diffusers)):
        layout = lora_file_layout(cfg, "official", 4)
        state = _meta_state(layout)
        n_factors = sum(k.endswith(("lora_A.weight", "lora_B.weight")) for k in state)
        with torch.device("meta"):
            model = cls.from_config(to_diffusers_config(cfg))
        converted = convert(dict(state))
        placed = _check_keys_fit(converted, model, cls.__name__)
        linears = {n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
        if cls is WanTransformer3DModel:
            assert placed == linears
            linear_biases = sum(k.endswith(".diff_b") and k.replace(".diff_b", ".lora_A.weight") in state for k in state)
            assert sum(".lora_" in k for k in converted) == n_factors + linear_biases
        else:  # the refiner's fused q, k, v goes as a diff entry (its converter rule splits lora_A wrongly)
            refiner_qkv = {n for n in linears if "token_refiner" in n and n.split(".")[-1] in ("to_q", "to_k", "to_v")}
            assert placed == linears - refiner_qkv
            leftovers = {k for k in converted if ".lora_" not in k}
            assert all(k.endswith((".diff", ".diff_b")) for k in leftovers), sorted(leftovers)[:5]


@pytest.mark.parametrize("family", ["wan", "hunyuan15"])
def test_fp8_single_file_round_trip(models, tmp_path, family):
    m = models[family]
    path = tmp_path / f"{family}_fp8.safetensors"
    assert main(["export", "--src", str(m["teacher_path"]), "--dst", str(path), "--layout", family, "--dtype",
                 "fp8"]) == 0
    full = tmp_path / f"{family}_fp32.safetensors"
    assert main(["export", "--src", str(m["teacher_path"]), "--dst", str(full), "--layout", family]) == 0
    raw, ref = load_file(path), load_file(full)
    assert raw[fp8.MARKER].dtype == fp8.FP8
    quantised = [k for k in ref if fp8.quantized(k, ref[k].shape)]
    assert len(quantised) >= 10
    for key in quantised:
        assert raw[key].dtype == fp8.FP8
        scale = raw[key.removesuffix(".weight") + fp8.SCALE_SUFFIX]
        err = (raw[key].float() * scale - ref[key]).abs()
        assert (err <= fp8.error_bound(ref[key], scale)).all(), key
    assert all(raw[k].dtype == torch.bfloat16 for k in ref if k not in quantised)
    _import(path, tmp_path / "back")
    err = _rel(load_model(tmp_path / "back"), m["teacher"], family)
    # each weight is within its bound (above); the output moves by what e4m3's 3 mantissa bits allow: measured
    # 1e-2 (Wan) and 5.1e-2 (HunyuanVideo-1.5, whose random weights all have std 0.2) on these tiny models
    assert 0 < err < {"wan": 0.05, "hunyuan15": 0.1}[family], f"fp8 round trip: output {err:.3g} from fp32"


def test_outside_fp8_file_imports(models, tmp_path):
    """A plain e4m3fn file (no scales) under ComfyUI's key prefix, as published fp8 Wan files are."""
    m = models["wan"]
    state = wan_original_state(m["teacher"].state_dict())
    cast = {k: (v.to(fp8.FP8) if fp8.quantized(k, v.shape) else v.to(torch.bfloat16)) for k, v in state.items()}
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in cast.items()}, tmp_path / "outside.safetensors")
    _import(tmp_path / "outside.safetensors", tmp_path / "pose")
    model = load_model(tmp_path / "pose")
    expected = m["teacher"].__class__.from_pretrained(m["teacher_diffusers"])
    with torch.no_grad():  # the same rounding applied to diffusers' own model
        for (name, p) in expected.named_parameters():
            p.copy_(p.to(fp8.FP8).float() if p.dim() == 2 and "blocks." in name and name.endswith("weight")
                    else p.to(torch.bfloat16).float())
    assert _rel(model, expected, "wan") < 1e-5


def _fails(argv: list[str], capsys, expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("pose-convert: error:"), err


def test_bad_input(models, tmp_path, capsys):
    wan, hy = models["wan"], models["hunyuan"]
    dst = tmp_path / "out.safetensors"
    base = ["export", "--layout", "lora", "--dst", str(dst), "--rank", "4"]
    _fails([*base, "--src", str(wan["gen_linear_path"]), "--base", str(hy["teacher_path"])], capsys,
           "is a wan model but the teacher")
    t2v = diffusers_wan(i2v=False, seed=0)
    t2v.save_pretrained(tmp_path / "t2v_d")
    _import(tmp_path / "t2v_d", tmp_path / "t2v")
    _fails([*base, "--src", str(wan["gen_linear_path"]), "--base", str(tmp_path / "t2v")], capsys,
           "have different architectures")
    _fails(["export", "--layout", "lora", "--dst", str(dst), "--rank", "10000", "--src", str(wan["gen_linear_path"]),
            "--base", str(wan["teacher_path"])], capsys, "is larger than the layer blocks.0.")
    _fails([*base, "--src", str(wan["gen_linear_path"])], capsys, "needs --base")
    _fails(["export", "--layout", "lora", "--dst", str(dst), "--rank", "zero", "--src", str(wan["gen_linear_path"]),
            "--base", str(wan["teacher_path"])], capsys, "--rank 'zero'")
    _fails(["export", "--layout", "wan-diffusers", "--dtype", "fp8", "--dst", str(tmp_path / "x"),
            "--src", str(wan["teacher_path"])], capsys, "--dtype fp8 writes one official-layout")
    assert not dst.exists() and not list(tmp_path.glob(".out.safetensors.tmp-*"))
    dst.write_text("keep me")
    _fails([*base, "--src", str(wan["gen_linear_path"]), "--base", str(wan["teacher_path"])], capsys,
           "destination exists")
    assert dst.read_text() == "keep me"


def test_hunyuan_final_adaln_factors_survive_diffusers_half_swap(models, tmp_path):
    """diffusers' HunyuanVideo converter swaps the halves of both factors of the final AdaLN (right for B,
    wrong for A); the export writes A twice so that the product it loads is the generator's."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    m = models["hunyuan"]
    path = tmp_path / "hy.safetensors"
    assert _export(m, "gen_linear", path, "2", "official") == 0
    prefix = "diffusion_model.final_layer.adaLN_modulation.1."
    lora = {k: v for k, v in load_file(path).items() if k.startswith(prefix)}
    converted = _convert_hunyuan_video_lora_to_diffusers(dict(lora))
    a, b = converted["transformer.norm_out.linear.lora_A.weight"], converted["transformer.norm_out.linear.lora_B.weight"]
    want = lora[prefix + "lora_B.weight"] @ lora[prefix + "lora_A.weight"]  # official (shift, scale) order
    shift, scale = want.chunk(2)
    torch.testing.assert_close(b @ a, torch.cat([scale, shift]), rtol=0, atol=1e-6)


def test_single_file_exports_carry_their_architecture(tp1, tmp_path):
    """A single official-layout file written by pose-convert export (fp8 or bf16) carries the architecture import
    needs beside the shapes: a Wan model of 2 heads, whose widths are the 4-head tiny preset's (the shapes alone
    gave it that preset's 4 heads, silently), comes back with 2 and no --set."""
    import json

    from pose_mcore.checkpoint.convert import ARCHITECTURE_KEY
    from pose_mcore.checkpoint.io import safetensors_metadata
    from pose_mcore.models.wan import WanModel
    from pose_mcore.training.checkpointing import export_pose_checkpoint

    model = WanModel(wan_config("tiny-t2v", num_attention_heads=2))
    assert model.config.num_attention_heads != wan_config("tiny-t2v").num_attention_heads
    export_pose_checkpoint(model, tmp_path / "pose")
    for dtype in ("fp8", "bf16"):
        path = tmp_path / f"wan-{dtype}.safetensors"
        assert main(["export", "--src", str(tmp_path / "pose"), "--dst", str(path), "--layout", "wan", "--dtype",
                     dtype]) == 0
        assert json.loads(safetensors_metadata(path)[ARCHITECTURE_KEY]) == model.config.architecture()
        _import(path, tmp_path / f"back-{dtype}")
        assert load_model(tmp_path / f"back-{dtype}").config.architecture() == model.config.architecture(), dtype


def test_a_rank_above_a_small_layers_is_one_rank_for_all(models, tmp_path):
    """--rank 24 on a model whose head has 16 outputs (Wan-14B's has 64): the head's exact factors padded with zeros
    to 24, so that every layer of the file has one rank (mixed ranks made diffusers releases before their mixed-rank
    fix scale the head by another layer's alpha); its B @ A is still the generator's change of the head."""
    m = models["wan"]
    path = tmp_path / "lora.safetensors"
    assert _export(m, "gen_linear", path, "24", "official") == 0
    tensors = load_file(path)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A.weight")} == {24}
    b, a = tensors["diffusion_model.head.head.lora_B.weight"], tensors["diffusion_model.head.head.lora_A.weight"]
    assert b.shape == (16, 24) and not b[:, 16:].any() and not a[16:].any()
    change = m["gen_linear"].proj_out.weight - m["teacher"].proj_out.weight
    assert_close_rel((b.float() @ a.float()), change.detach(), 1e-5, "head")


def test_diffusers_export_states_every_layers_rank(models, tmp_path):
    """The diffusers-key file says each layer's rank and alpha (= rank: scale 1) in the header diffusers reads
    (``lora_adapter_metadata``), as its own ``save_lora_adapter`` writes it: a --rank full export has each layer's
    full rank, and a loader need not infer them. Loaded with that configuration, diffusers gives what it gives
    without it, and the ranks it states are the tensors' own."""
    import json

    from diffusers import WanPipeline, WanTransformer3DModel

    m = models["wan"]
    path = tmp_path / "lora.safetensors"
    assert _export(m, "gen_linear", path, "full", "diffusers") == 0
    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
        ranks = {k.removeprefix("transformer.").removesuffix(".lora_A.weight"): f.get_slice(k).get_shape()[0]
                 for k in f.keys() if k.endswith(".lora_A.weight")}
    r = config["transformer.r"]
    assert {k: config["transformer.rank_pattern"].get(k, r) for k in ranks} == ranks
    assert config["transformer.alpha_pattern"] == config["transformer.rank_pattern"]
    assert config["transformer.lora_alpha"] == r and sorted(config["transformer.target_modules"]) == sorted(ranks)
    state, metadata = WanPipeline.lora_state_dict(str(tmp_path), weight_name=path.name, return_lora_metadata=True)
    assert metadata is not None and metadata["transformer.r"] == r
    outs = []
    for meta in (metadata, None):
        model = WanTransformer3DModel.from_pretrained(m["teacher_diffusers"]).eval()
        model.load_lora_adapter(dict(state), prefix="transformer", adapter_name="pose", metadata=meta)
        with torch.no_grad():
            outs.append(model(**_inputs("wan")).sample)
    assert torch.equal(outs[0], outs[1])


LINEARS_RUN = ["preset=tiny-i2v", "tensor_parallel=1", "micro_batch_size=2", "data.size=8", "data.frames=3",
               "data.height=8", "data.width=8", "phase1.steps=2", "phase2.steps=2", "phase1.fake_updates=1",
               "phase1.lora_rank=4", "phase1.optim_g.lr=1e-3", "phase2.optim_g.lr=1e-3", "log_every=100"]


def test_a_generator_trained_on_its_linears_is_an_exact_lora_in_diffusers(tp1, tmp_path, capsys):
    """``generator_params=linears`` in both phases: the norms, modulation tables and patch embedding stay the
    teacher's bit for bit, the linear layers move, and a full-rank diffusers-key LoRA loaded by diffusers onto
    the teacher is the generator (the export says so instead of listing losses)."""
    from pose_mcore.config.train import load_train_config
    from pose_mcore.pose.roles import lora_carried
    from pose_mcore.training.trainer import Trainer

    teacher = Trainer(load_train_config(None, [*LINEARS_RUN, "phases=[teacher]", "teacher.steps=2",
                                               f"output_dir={tmp_path / 'teacher'}"])).run()
    generator = Trainer(load_train_config(None, [
        *LINEARS_RUN, "phases=[phase1,phase2]", f"teacher_checkpoint={teacher}", "phase1.generator_params=linears",
        "phase2.generator_params=linears", f"output_dir={tmp_path / 'run'}"])).run()
    before, after = load_model(teacher), load_model(generator)
    carried = {id(p) for p in lora_carried(after)}
    moved = {n: not torch.equal(p, before.state_dict()[n]) for n, p in after.named_parameters()}
    kept = [n for n, p in after.named_parameters() if id(p) not in carried]
    assert {"scale_shift_table", "patch_embedding.weight", "image_embedder.norm1.weight"} <= set(kept)
    assert not any(moved[n] for n in kept), [n for n in kept if moved[n]]
    assert sum(moved.values()) >= 0.9 * (len(moved) - len(kept))  # the linear layers trained
    capsys.readouterr()
    lora = tmp_path / "lora.safetensors"
    for src, dst in ((teacher, "teacher_diffusers"), (generator, "gen_diffusers")):
        assert main(["export", "--src", str(src), "--dst", str(tmp_path / dst), "--layout", "wan-diffusers"]) == 0
    assert main(["export", "--layout", "lora", "--src", str(generator), "--base", str(teacher), "--dst", str(lora),
                 "--rank", "full", "--lora-keys", "diffusers"]) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("in diffusers: ")]
    assert note == ["in diffusers: every tensor a LoRA cannot carry is the teacher's (a generator trained with "
                    "generator_params=linears), so the teacher with this LoRA is the generator"]
    from diffusers import WanTransformer3DModel

    model = _diffusers_with_lora("wan", {"teacher_diffusers": tmp_path / "teacher_diffusers"}, lora)
    want = WanTransformer3DModel.from_pretrained(tmp_path / "gen_diffusers").eval()
    cfg, gen = want.config, torch.Generator().manual_seed(5)
    inputs = {"hidden_states": torch.randn(1, cfg.in_channels, 2, 4, 6, generator=gen),
              "encoder_hidden_states": torch.randn(1, 7, cfg.text_dim, generator=gen),
              "encoder_hidden_states_image": torch.randn(1, 5, cfg.image_dim, generator=gen),
              "timestep": torch.tensor([700.0])}
    with torch.no_grad():
        out, ref, base = (m(**inputs).sample for m in (model, want, WanTransformer3DModel.from_pretrained(
            tmp_path / "teacher_diffusers").eval()))
    assert (ref - base).abs().max() > 1e-3 * ref.abs().max()  # the generator is not its teacher
    assert_close_rel(out, ref, 1e-5)
