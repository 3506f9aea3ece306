"""The checkpoint converter: every layout in, pose_mcore out, loads to diffusers' outputs (TP=1 and
TP=2), exports back bit for bit, and refuses bad input with one message, exit status 2 and no
partial destination."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from checkpoint_fixtures import checkpoint_tensors, hunyuan_original_state, wan_original_state, write_all_layouts
from conftest import assert_close_rel, torchrun
from devices import to_device
from diffusers.loaders.single_file_utils import (
    convert_hunyuan_video_transformer_to_diffusers,
    convert_wan_transformer_to_diffusers,
)
from hunyuan15_reference import hunyuan15_inputs
from hunyuan_reference import hunyuan_inputs
from safetensors.torch import load_file, save_file
from wan_reference import wan_inputs

from pose_mcore.checkpoint.command import main
from pose_mcore.checkpoint.load import load_model

HUNYUAN_TINY_ROPE = ["--set", "rope_axes_dim=2,2,4"]  # not readable from the official tensors at tiny sizes
EXPORT_LAYOUT = {"wan_t2v_diffusers": "wan-diffusers", "wan_i2v_diffusers": "wan-diffusers",
                 "wan_t2v_original": "wan", "wan_i2v_original": "wan",
                 "hunyuan_t2v_diffusers": "hunyuan-diffusers", "hunyuan_i2v_concat_diffusers": "hunyuan-diffusers",
                 "hunyuan_t2v_original": "hunyuan", "hunyuan_i2v_concat_original": "hunyuan",
                 **{f"hunyuan15_{v}_{kind}": "hunyuan15" + suffix for v in ("t2v", "i2v", "meanflow")
                    for kind, suffix in (("diffusers", "-diffusers"), ("original", ""))}}


def _inputs(case: str) -> dict[str, torch.Tensor]:
    if case.startswith("hunyuan15"):
        return hunyuan15_inputs(case.split("_")[1], 2, 3, 4, 6, [5, 2], [3, 0], seed=4)
    if case.startswith("wan"):
        return wan_inputs("i2v" in case, 2, 3, 4, 6, seed=4)
    return hunyuan_inputs("i2v_concat" if "i2v" in case else "t2v", 2, 3, 4, 6, [5, 2], seed=4)


def _import_args(case: str) -> list[str]:
    """The tiny models' rotary axes, which the official tensors do not show (the mean-flow folder's config.json
    states them)."""
    return HUNYUAN_TINY_ROPE if case.startswith("hunyuan") and case.endswith("original") and "meanflow" not in case \
        else []


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_all_layouts(tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="module")
def imported(layouts, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for case, (path, _) in layouts.items():
        assert main(["import", "--src", str(path), "--dst", str(root / case), *_import_args(case)]) == 0
        out[case] = root / case
    return out


def test_fixtures_follow_the_published_maps(layouts):
    """The official-layout fixtures map back to diffusers with diffusers' own converters (its Hunyuan
    converter assumes the 13B width for the fused single-stream linear, so that tensor is left out)."""
    for case in ("wan_t2v_original", "wan_i2v_original"):
        state = layouts[case][1].state_dict()
        back = convert_wan_transformer_to_diffusers(wan_original_state(state))
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    for case in ("hunyuan_t2v_original", "hunyuan_i2v_concat_original"):
        state = layouts[case][1].state_dict()
        original = {k: v for k, v in hunyuan_original_state(state).items() if ".linear1." not in k}
        back = convert_hunyuan_video_transformer_to_diffusers(original)
        kept = [k for k in state if not (k.startswith("single_transformer_blocks") and (".to_" in k or "proj_mlp" in k))]
        assert all(torch.equal(back[k], state[k]) for k in kept)


@pytest.mark.parametrize("case", list(EXPORT_LAYOUT))
def test_import_then_load_matches_diffusers(tp1, layouts, imported, case):
    reference = layouts[case][1]
    model = load_model(imported[case])
    assert not model.training
    inputs = _inputs(case)
    with torch.no_grad():
        assert_close_rel(model(**to_device(inputs)).sample, reference(**inputs).sample, 1e-5, case)
    config = json.loads((imported[case] / "config.json").read_text())
    assert config["format"] == "pose_mcore" and config["converted_from"] == EXPORT_LAYOUT[case]


@pytest.mark.parametrize("case", list(EXPORT_LAYOUT))
def test_round_trip_is_bit_exact(layouts, imported, tmp_path, case):
    src = layouts[case][0]
    dst = tmp_path / (src.name if src.is_file() else case)
    if case.startswith("hunyuan_") and case.endswith("original"):
        dst = tmp_path / "mp_rank_00_model_states.pt"
    assert main(["export", "--src", str(imported[case]), "--dst", str(dst), "--layout", EXPORT_LAYOUT[case]]) == 0
    before, after = checkpoint_tensors(src), checkpoint_tensors(dst)
    assert set(after) == set(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def test_sharded_import_and_export(layouts, tmp_path):
    src, reference = layouts["wan_i2v_diffusers"]
    assert main(["import", "--src", str(src), "--dst", str(tmp_path / "pose"), "--shard-size", "64KB"]) == 0
    shards = sorted(p.name for p in (tmp_path / "pose").glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "pose" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert main(["export", "--src", str(tmp_path / "pose"), "--dst", str(tmp_path / "wan"), "--layout", "wan",
                 "--shard-size", "100KB"]) == 0
    assert (tmp_path / "wan" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert main(["import", "--src", str(tmp_path / "wan"), "--dst", str(tmp_path / "again")]) == 0  # heads from config.json
    first, again = checkpoint_tensors(tmp_path / "pose"), checkpoint_tensors(tmp_path / "again")
    assert set(first) == set(again) and all(torch.equal(first[k], again[k]) for k in first)


def test_dtype_conversion(layouts, tmp_path):
    assert main(["import", "--src", str(layouts["wan_t2v_diffusers"][0]), "--dst", str(tmp_path / "bf16"),
                 "--dtype", "bf16"]) == 0
    assert {t.dtype for t in checkpoint_tensors(tmp_path / "bf16").values()} == {torch.bfloat16}


def test_inspect(layouts, capsys):
    assert main(["inspect", str(layouts["hunyuan_i2v_concat_original"][0]), "--json", *HUNYUAN_TINY_ROPE]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["variant"], info["layout"]) == ("hunyuan", "tiny-hunyuan-i2v", "hunyuan")
    assert info["parameters"] == sum(p.numel() for p in layouts["hunyuan_i2v_concat_original"][1].parameters())
    assert info["unplaced_keys"] == [] and info["dtypes"] == ["float32"]
    assert main(["inspect", str(layouts["wan_t2v_original"][0])]) == 0
    assert "variant: tiny-t2v" in capsys.readouterr().out


@pytest.mark.slow
def test_tp2_loads_its_slices(layouts, imported, tmp_path):
    cases = {c: (str(imported[c]), _inputs(c)) for c in ("wan_i2v_diffusers", "hunyuan_t2v_original",
                                                          "hunyuan15_i2v_original")}
    torch.save(cases, tmp_path / "cases.pt")
    torchrun("load_tp.py", "--cases", str(tmp_path / "cases.pt"), "--out", str(tmp_path / "out.pt"))
    results = torch.load(tmp_path / "out.pt")
    for case, (_, inputs) in cases.items():
        with torch.no_grad():
            expected = layouts[case][1](**inputs).sample
        for sp in (0, 1):
            assert_close_rel(results[f"{case}/sp{sp}"], expected, 1e-5, f"{case} TP=2 sp={sp}")


# --- bad input ---------------------------------------------------------------------------------------

def _fails(args, capsys, match: str, dst) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pose-convert: error: ") and match in err, err
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if ".tmp-" in p.name]


def _original_wan(layouts, tmp_path, edit) -> str:
    state = load_file(layouts["wan_t2v_original"][0])
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, path)
    return str(path)


def test_missing_path(tmp_path, capsys):
    _fails(["import", "--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "out")], capsys,
           "nope: no such file or folder", tmp_path / "out")


def test_truncated_and_corrupt_safetensors(layouts, tmp_path, capsys):
    data = layouts["wan_t2v_original"][0].read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    _fails(["import", "--src", str(tmp_path / "truncated.safetensors"), "--dst", str(tmp_path / "out")], capsys,
           "truncated.safetensors: not a readable safetensors file", tmp_path / "out")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[:100])
    _fails(["import", "--src", str(tmp_path / "corrupt.safetensors"), "--dst", str(tmp_path / "out")], capsys,
           "corrupt.safetensors: not a readable safetensors file", tmp_path / "out")


def test_unknown_layout(tmp_path, capsys):
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, tmp_path / "bert.safetensors")
    _fails(["import", "--src", str(tmp_path / "bert.safetensors"), "--dst", str(tmp_path / "out")], capsys,
           "unknown layout", tmp_path / "out")
    (tmp_path / "weights.npz").write_bytes(b"")
    _fails(["import", "--src", str(tmp_path / "weights.npz"), "--dst", str(tmp_path / "out")], capsys,
           "unknown checkpoint file type '.npz'", tmp_path / "out")


def test_missing_and_unexpected_keys(layouts, tmp_path, capsys):
    src = _original_wan(layouts, tmp_path, lambda s: s.pop("blocks.1.ffn.2.weight"))
    _fails(["import", "--src", src, "--dst", str(tmp_path / "out")], capsys, "missing ['blocks.1.mlp.linear_fc2.weight']",
           tmp_path / "out")
    src = _original_wan(layouts, tmp_path, lambda s: s.update({"blocks.0.extra.weight": torch.zeros(1)}))
    _fails(["import", "--src", src, "--dst", str(tmp_path / "out")], capsys,
           "keys the layout cannot place: ['blocks.0.extra.weight']", tmp_path / "out")


def test_shape_that_does_not_fit(layouts, tmp_path, capsys):
    src = _original_wan(layouts, tmp_path, lambda s: s.update({"blocks.0.ffn.2.weight": torch.zeros(48, 95)}))
    _fails(["import", "--src", src, "--dst", str(tmp_path / "out")], capsys,
           "'blocks.0.mlp.linear_fc2.weight' has shape (48, 95) but the detected config needs (48, 96)", tmp_path / "out")


def test_destination_exists(layouts, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["import", "--src", str(layouts["wan_t2v_diffusers"][0]), "--dst", str(dst)]) == 2
    assert "destination exists (pass --overwrite" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    assert main(["import", "--src", str(layouts["wan_t2v_diffusers"][0]), "--dst", str(dst), "--overwrite"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()


def test_tp_size_that_does_not_divide_the_heads(layouts, tmp_path, capsys):
    _fails(["import", "--src", str(layouts["wan_t2v_diffusers"][0]), "--dst", str(tmp_path / "out"), "--tp", "3"],
           capsys, "num_attention_heads=4 must be divisible by tensor_model_parallel_size=3", tmp_path / "out")


def test_wrong_family_and_wrong_layout_for_export(layouts, imported, tmp_path, capsys):
    _fails(["import", "--src", str(layouts["wan_t2v_diffusers"][0]), "--dst", str(tmp_path / "out"),
            "--family", "hunyuan"], capsys, "--family hunyuan but the checkpoint is a wan model", tmp_path / "out")
    _fails(["export", "--src", str(imported["wan_t2v_diffusers"]), "--dst", str(tmp_path / "out"),
            "--layout", "hunyuan-diffusers"], capsys, "cannot be written in the hunyuan-diffusers layout",
           tmp_path / "out")


def test_load_model_refuses_other_layouts(layouts):
    from pose_mcore.checkpoint.io import CheckpointError

    with pytest.raises(CheckpointError, match="load_model reads pose_mcore checkpoints"):
        load_model(layouts["wan_t2v_diffusers"][0])


def test_interrupted_write_keeps_previous_destination(layouts, imported, tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint as it was and no temporary folder."""
    import pose_mcore.checkpoint.convert as convert

    dst = tmp_path / "pose"
    shutil.copytree(imported["wan_t2v_diffusers"], dst)
    before = checkpoint_tensors(dst)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert.SafetensorsStreamWriter, "close", boom)
    with pytest.raises(KeyboardInterrupt):
        convert.import_checkpoint(layouts["wan_i2v_diffusers"][0], dst, overwrite=True)
    after = checkpoint_tensors(dst)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bench_convert_runs(tmp_path):
    """The memory benchmark runs end to end on a small checkpoint (its numbers are not asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "bench_convert.py"
    proc = subprocess.run([sys.executable, str(script), "--gb", "0.02", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "import: peak RSS" in proc.stdout and "export: peak RSS" in proc.stdout


def test_pth_and_ema_sources(layouts, tmp_path):
    """A Wan official .pth and a HunyuanVideo file whose EMA weights are chosen with --container."""
    reference = layouts["wan_t2v_original"][1]
    torch.save(wan_original_state(reference.state_dict()), tmp_path / "wan.pth")
    assert main(["import", "--src", str(tmp_path / "wan.pth"), "--dst", str(tmp_path / "wan_pose")]) == 0
    hy = layouts["hunyuan_t2v_original"][1].state_dict()
    ema = {k: v + 1 for k, v in hunyuan_original_state(hy).items()}
    torch.save({"module": hunyuan_original_state(hy), "ema": ema}, tmp_path / "hy.pt")
    assert main(["import", "--src", str(tmp_path / "hy.pt"), "--dst", str(tmp_path / "hy_ema"), "--container", "ema",
                 *HUNYUAN_TINY_ROPE]) == 0
    imported = checkpoint_tensors(tmp_path / "hy_ema")
    assert torch.equal(imported["x_embedder.weight"], ema["img_in.proj.weight"])
    assert main(["import", "--src", str(tmp_path / "hy.pt"), "--dst", str(tmp_path / "no"), "--container", "nope",
                 *HUNYUAN_TINY_ROPE]) == 2


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_slice_reads_match_narrow(tmp_path, dim):
    """Reading ranges of a tensor from a safetensors file equals narrowing the whole tensor."""
    from pose_mcore.checkpoint.io import SafetensorsSource

    full = torch.randn(6, 10, 4)
    save_file({"t": full}, tmp_path / "t.safetensors")
    source = SafetensorsSource(tmp_path, [tmp_path / "t.safetensors"])
    ranges = [(1, 3), (4, full.shape[dim])]
    expected = torch.cat([full.narrow(dim, a, b - a) for a, b in ranges], dim=dim)
    assert torch.equal(source.get_ranges("t", dim, ranges), expected)


def test_hunyuan15_official_fields(layouts, imported, tmp_path, capsys):
    """What the official HunyuanVideo-1.5 tensors do not show comes from the variant folder's name (480p_t2v) or
    its config.json (task, resolution, heads, rotary axes); an exported official folder re-imports with nothing
    given; without either, inspect says what it assumed."""
    def arch(folder):
        return json.loads((folder / "config.json").read_text())["architecture"]

    assert (arch(imported["hunyuan15_t2v_original"])["task_type"], arch(imported["hunyuan15_t2v_original"])
            ["target_size"]) == ("t2v", 640)
    meanflow = arch(imported["hunyuan15_meanflow_original"])
    assert (meanflow["task_type"], meanflow["target_size"], meanflow["use_meanflow"]) == ("i2v", 960, True)
    assert main(["export", "--src", str(imported["hunyuan15_meanflow_original"]), "--dst", str(tmp_path / "official"),
                 "--layout", "hunyuan15"]) == 0
    assert main(["import", "--src", str(tmp_path / "official"), "--dst", str(tmp_path / "again")]) == 0
    assert arch(tmp_path / "again") == meanflow
    single = tmp_path / "hy15-bf16.safetensors"  # one official-layout file in bf16, its architecture in the header
    assert main(["export", "--src", str(imported["hunyuan15_meanflow_original"]), "--dst", str(single), "--layout",
                 "hunyuan15", "--dtype", "bf16"]) == 0
    assert main(["import", "--src", str(single), "--dst", str(tmp_path / "from-single")]) == 0
    assert arch(tmp_path / "from-single") == meanflow
    want, got = checkpoint_tensors(imported["hunyuan15_meanflow_original"]), checkpoint_tensors(tmp_path / "from-single")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
    capsys.readouterr()
    # the tiny model sits in a folder named for 480p (target size 640): with its own size it is the tiny preset
    assert main(["inspect", str(layouts["hunyuan15_t2v_original"][0]), "--json", *HUNYUAN_TINY_ROPE, "--set",
                 "target_size=32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["variant"], info["layout"]) == ("hunyuan15", "tiny-hunyuan1.5-t2v", "hunyuan15")
    assert info["notes"] == []
    renamed = tmp_path / "weights"
    shutil.copytree(layouts["hunyuan15_t2v_original"][0], renamed)
    assert main(["inspect", str(renamed), "--json", *HUNYUAN_TINY_ROPE]) == 0
    assert any("assuming i2v at 480p" in n for n in json.loads(capsys.readouterr().out)["notes"])
    _fails(["import", "--src", str(renamed), "--dst", str(tmp_path / "out")], capsys, "rotary axes must be given",
           tmp_path / "out")
