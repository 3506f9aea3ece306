"""pose-prepare: videos + captions -> a latent dataset through the model folder's encoders (fields equal the
encoders' own computation on the same clip), resumable, bad inputs skipped and reported; training on
prepared datasets uses every real field."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import av
import numpy as np
import pytest
import torch
from devices import to_device
from encoder_fixtures import HUNYUAN_I2V_TEMPLATE, HUNYUAN_TEMPLATE, TINY_PRESET
from torch.utils.data import default_collate

from pose_mcore.data.latents import LatentDataset
from pose_mcore.data.prepare import main as prepare
from pose_mcore.data.video import read_clip, write_mp4
from pose_mcore.encoders import ModelEncoders

SIZE = ["--height", "32", "--width", "48", "--frames", "5", "--fps", "4"]
CAPTIONS = ["a red square moving left", 'a blue disk moving up "HI"', "a green cross moving right", "a cat runs"]
"""The second has quoted text: HunyuanVideo-1.5's glyph encoder reads it."""


def _clip(seed: int, frames: int = 12) -> np.ndarray:
    """A smooth moving pattern (H.264 keeps it), 40 x 56 pixels: the clips are resized and cropped."""
    y, x = np.mgrid[0:40, 0:56]
    out = [np.stack([128 + 100 * np.sin((x + 3 * f + seed) / 6), 128 + 100 * np.cos((y - 2 * f) / 5),
                     np.full_like(x, 40 * seed % 255, dtype=float)], axis=-1) for f in range(frames)]
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four good clips with captions, an unreadable file, a too-short clip and a clip without a caption."""
    root = tmp_path_factory.mktemp("videos")
    for i, caption in enumerate(CAPTIONS):
        write_mp4(_clip(i), root / f"good{i}.mp4", fps=8)
        (root / f"good{i}.txt").write_text(caption)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    (root / "broken.txt").write_text("a dog")
    write_mp4(_clip(9, frames=3), root / "short.mp4", fps=8)
    (root / "short.txt").write_text("a dog jumps")
    write_mp4(_clip(7), root / "uncaptioned.mp4", fps=8)
    return root


def _prepare(models, kind, inputs, out, *extra) -> int:
    args = ["--input", str(inputs), "--model", str(models[kind]), "--out", str(out), *SIZE, "--per-shard", "2",
            "--max-sequence-length", "12", "--negative-prompt", "blurry static", *extra]
    if kind.startswith("hunyuan-"):
        args += ["--prompt-template", str(models[f"template:{kind.removesuffix('-replace')}"])]
    if kind == "wan-ti2v":  # Wan2.2's VAE downsamples 16x
        args += ["--height", "64", "--width", "96"]
    return prepare(args)


@pytest.fixture(scope="module")
def models(model_folders):
    return model_folders


@pytest.fixture(scope="module")
def prepared(models, inputs, tmp_path_factory):
    out = {}
    for kind in ("wan-i2v", "wan-ti2v", "hunyuan-t2v", "hunyuan-i2v", "hunyuan-i2v-replace", "hunyuan15-t2v",
                 "hunyuan15-i2v"):
        out[kind] = tmp_path_factory.mktemp("data") / kind
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert _prepare(models, kind, inputs, out[kind]) == 0
        out[f"stderr:{kind}"] = err.getvalue()
    return out


def test_fields_equal_the_encoders_on_the_same_clip(models, inputs, prepared):
    for kind, fields in (("wan-i2v", {"latents", "text", "image_states", "condition"}),
                         ("hunyuan-t2v", {"latents", "text", "text_mask", "pooled"}),
                         ("hunyuan-i2v", {"latents", "text", "text_mask", "pooled", "condition"}),
                         ("hunyuan15-i2v", {"latents", "text", "text_mask", "glyph", "glyph_mask", "image_states",
                                            "condition"})):
        data = LatentDataset(prepared[kind] / "manifest.jsonl")
        assert len(data) == 4 and set(data.fields) == fields
        enc = ModelEncoders(models[kind], max_sequence_length=12,
                            prompt_template={"hunyuan-t2v": HUNYUAN_TEMPLATE, "hunyuan-i2v": HUNYUAN_I2V_TEMPLATE}.get(kind))
        frames = read_clip(inputs / "good2.mp4", 5, 32, 48, fps=4)
        image = frames[0] if kind == "hunyuan-i2v" else None
        want = {"latents": enc.encode_video(frames),
                **{k: v[0] for k, v in enc.encode_prompts([CAPTIONS[2]], image).items()},
                **{k: v[0] for k, v in enc.encode_first_frame(frames[0], 5, 32, 48).items()}}
        got = data[2]
        for field in fields - ({"text"} if "text_mask" in fields else set()):
            assert torch.equal(got[field], want[field]), (kind, field)
        stored = data.sources[data.samples[2]["file"]].shape(data.samples[2]["text"])[0]
        assert 1 <= stored < data.samples[2]["text_length"] == want["text"].shape[0]  # 12 (LLaVA: and the image's)
        if kind.startswith("wan"):  # stored without the zero rows after the prompt, read back padded
            assert want["text"][stored:].eq(0).all()
        else:  # masked text: stored up to its last valid token, read back with zero rows after it
            assert stored == int(want["text_mask"].sum()) and not want["text"][stored:].eq(0).all()
            assert got["text"][stored:].eq(0).all() and torch.equal(got["text"][:stored], want["text"][:stored])
        negative = enc.encode_negative("blurry static", 32, 48)
        assert set(data.negative) == {"wan-i2v": {"text"}, "hunyuan15-i2v": {"text", "text_mask", "glyph", "glyph_mask"}
                                      }.get(kind, {"text", "text_mask", "pooled"})
        for field, value in data.negative.items():
            assert torch.equal(value, negative[field]), (kind, field)


def test_bad_inputs_are_skipped_and_reported(prepared):
    out = prepared["wan-i2v"]
    report = json.loads((out / "report.json").read_text())
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert report["items"] == 7 and report["samples"] == 4
    assert reasons["broken.mp4"].endswith("broken.mp4: cannot decode: invalid data found when processing input")
    assert "too short: 0.38 s, need 1.00 s (5 frames at 4 fps)" in reasons["short.mp4"]
    assert "no caption" in reasons["uncaptioned.mp4"]
    # one line each on stderr, as the file is met, in words (FFmpeg's error numbers left out)
    skips = [line for line in prepared["stderr:wan-i2v"].splitlines() if line.startswith("pose-prepare: skipped")]
    assert sorted(skips) == sorted(f"pose-prepare: skipped {r}" for r in reasons.values())
    assert "Errno" not in prepared["stderr:wan-i2v"]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and not list(out.glob(".*tmp*"))


def test_resume_skips_finished_shards(models, inputs, prepared, tmp_path, capsys):
    out = tmp_path / "data"
    shutil.copytree(prepared["wan-i2v"], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    manifest = (out / "manifest.jsonl").read_text()
    assert _prepare(models, "wan-i2v", inputs, out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps
    (out / "shard-00001.jsonl").unlink()  # as if killed while encoding shard 1
    (out / "shard-00001.safetensors").unlink()
    assert _prepare(models, "wan-i2v", inputs, out) == 0
    assert (out / "manifest.jsonl").read_text() == manifest
    assert {p.name for p in out.glob("shard-*")} == set(stamps)
    capsys.readouterr()
    assert _prepare(models, "wan-i2v", inputs, out, "--frames", "9") == 2
    assert "prepared with other settings" in capsys.readouterr().err


def test_wrong_model_folder_stops_before_any_work(models, inputs, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(models["wan-i2v"], broken)
    shutil.rmtree(broken / "vae")
    for model, match in ((tmp_path / "nothing", "no model_index.json"), (broken, "component folder vae/ is missing")):
        code = prepare(["--input", str(inputs), "--model", str(model), "--out", str(tmp_path / "out"), *SIZE])
        assert code == 2 and match in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    code = prepare(["--input", str(inputs), "--model", str(models["wan-i2v"]), "--out", str(tmp_path / "out"),
                    "--frames", "6"])
    assert code == 2 and "4k+1" in capsys.readouterr().err and not (tmp_path / "out").exists()
    code = prepare(["--input", str(inputs), "--model", str(models["wan-i2v"]), "--out", str(tmp_path / "out"),
                    *SIZE, "--vae-tile", "20"])
    assert code == 2 and "--vae-tile 20: must be a positive multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _loss_changes(preset: str, data: LatentDataset, edits: dict, unchanged: dict | None = None) -> None:
    """Phase I's and Phase II's generator losses on a prepared batch change when one field changes, and do not
    change under the ``unchanged`` edits."""
    from phase_fixtures import phase2_setup

    from pose_mcore.config.train import Phase1Config
    from pose_mcore.models.registry import family_of_preset
    from pose_mcore.parallel.state import run_device
    from pose_mcore.pose.conditioning import Conditioner
    from pose_mcore.pose.phase1 import Phase1
    from pose_mcore.pose.roles import Roles

    family = family_of_preset(preset)
    cfg = family.make_config(preset)
    torch.manual_seed(0)
    roles = Roles(family.build(cfg).to(run_device()), lora_rank=4, lora_alpha=4)
    batch = to_device({**default_collate([data[i] for i in range(2)]), "sample_index": torch.arange(2)})
    negative = to_device(data.negative)

    def losses(batch, negative) -> tuple[float, float]:
        conditioner = Conditioner(cfg, negative)
        phase1 = Phase1(roles, conditioner, Phase1Config(real_guidance=3.0), seed=3, device=run_device())
        phase2 = phase2_setup(roles, cfg)
        phase2.conditioner = conditioner
        return phase1.generator_loss(batch)[0].item(), phase2.generator_loss(batch)[0].item()

    base = losses(batch, negative)
    for name, edit in edits.items():
        if name.startswith("negative."):
            field = name.removeprefix("negative.")
            changed = losses(batch, {**negative, field: edit(negative[field])})
            assert changed[0] != base[0], name  # Phase I's real score is guided by the negative prompt
        else:
            changed = losses({**batch, name: edit(batch[name])}, negative)
            assert changed[0] != base[0] and changed[1] != base[1], name
    for name, edit in (unchanged or {}).items():
        assert losses({**batch, name: edit(batch)}, negative) == base, name


def test_training_steps_use_the_real_fields(tp1, prepared):
    _loss_changes(TINY_PRESET["wan-i2v"], LatentDataset(prepared["wan-i2v"] / "manifest.jsonl"), {
        "image_states": lambda v: v + 0.5, "condition": lambda v: v * 1.5, "text": lambda v: v + 0.5,
        "negative.text": lambda v: v + 0.5})

    def drop_last(mask):
        mask = mask.clone()
        last = int(mask[0].sum()) - 1
        mask[..., last] = 0
        return mask

    _loss_changes(TINY_PRESET["wan-ti2v"], LatentDataset(prepared["wan-ti2v"] / "manifest.jsonl"), {
        "first_frame": lambda v: v + 0.5, "text": lambda v: v + 0.5})
    _loss_changes(TINY_PRESET["hunyuan-i2v"], LatentDataset(prepared["hunyuan-i2v"] / "manifest.jsonl"), {
        "condition": lambda v: v * 1.5, "text": lambda v: v + 0.5, "negative.text": lambda v: v + 0.5})
    _loss_changes(TINY_PRESET["hunyuan-i2v-replace"], LatentDataset(prepared["hunyuan-i2v-replace"] / "manifest.jsonl"),
                  {"first_frame": lambda v: v + 0.5, "text": lambda v: v + 0.5, "negative.text": lambda v: v + 0.5})
    _loss_changes(TINY_PRESET["hunyuan-t2v"], LatentDataset(prepared["hunyuan-t2v"] / "manifest.jsonl"), {
        "pooled": lambda v: v + 0.5, "text_mask": drop_last, "negative.pooled": lambda v: v + 0.5})
    def tilt(v):  # a change across channels: the glyph and image projections start with a LayerNorm
        return v + torch.linspace(-1, 1, v.shape[-1], device=v.device)

    glyph = {"glyph": tilt, "glyph_mask": lambda m: torch.ones_like(m), "text_mask": drop_last,
             "text": lambda v: v + 0.5, "negative.text": lambda v: v + 0.5, "negative.glyph_mask": torch.ones_like}
    _loss_changes(TINY_PRESET["hunyuan15-t2v"], LatentDataset(prepared["hunyuan15-t2v"] / "manifest.jsonl"), glyph)
    def masked(tokens, mask):  # other values where the mask is 0: what the dataset's trimming drops
        return lambda batch: torch.where(batch[mask][..., None].bool(), batch[tokens], torch.randn_like(batch[tokens]))

    _loss_changes(TINY_PRESET["hunyuan15-i2v"], LatentDataset(prepared["hunyuan15-i2v"] / "manifest.jsonl"), {
        "image_states": tilt, "condition": lambda v: v * 1.5, **glyph},
        unchanged={"text": masked("text", "text_mask"), "glyph": masked("glyph", "glyph_mask")})
    _loss_changes(TINY_PRESET["hunyuan-t2v"], LatentDataset(prepared["hunyuan-t2v"] / "manifest.jsonl"), {},
                  unchanged={"text": masked("text", "text_mask")})


def _train(kind: str, manifest, out, preset: str | None = None, model_dir=None):
    from pose_mcore.config.train import load_train_config
    from pose_mcore.training.trainer import Trainer

    overrides = [f"preset={preset or TINY_PRESET[kind]}", "micro_batch_size=2", "data.kind=latents",
                 f"data.path={manifest}", f"output_dir={out}", "teacher.steps=1", "phase1.steps=1", "phase2.steps=1",
                 "phase1.fake_updates=1", "phase1.lora_rank=4", "phase2.head_dim=16", "phase2.head_queries=2",
                 "phase2.head_heads=2", "checkpoint_every=1", "sample_every=1"]
    if model_dir is not None:
        overrides.append(f"model_dir={model_dir}")
    return Trainer(load_train_config(None, overrides)).run()


@pytest.mark.parametrize("kind", ("wan-i2v", "hunyuan-t2v", "hunyuan-i2v-replace", "hunyuan15-i2v"))
def test_a_run_trains_on_a_prepared_dataset(tp1, models, prepared, kind, tmp_path):
    from pose_mcore.config.train import TrainConfigError

    generator = _train(kind, prepared[kind] / "manifest.jsonl", tmp_path / "out", model_dir=models[kind])
    assert (generator / "config.json").is_file()
    with av.open(str(tmp_path / "out" / "samples" / "phase2-final.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (2 * 32, 4 * 48, 3)  # 4 data videos over their 4 samples
    # the same dataset without its negative prompt: refused before any work, naming what is missing
    data = tmp_path / "data"
    shutil.copytree(prepared[kind], data)
    (data / "negative.safetensors").unlink()
    with pytest.raises(TrainConfigError, match=r"negative prompt \(negative.safetensors\) is missing"):
        _train(kind, data / "manifest.jsonl", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_a_real_preset_refuses_a_dataset_without_its_fields(tp1, prepared, tmp_path):
    from pose_mcore.config.train import TrainConfigError

    with pytest.raises(TrainConfigError) as e:
        _train("wan-i2v", prepared["hunyuan-t2v"] / "manifest.jsonl", tmp_path / "out", preset="wan2.1-i2v-14b")
    assert "field 'image_states' is missing" in str(e.value) and "field 'condition' is missing" in str(e.value)


def test_text_is_stored_trimmed_and_read_back_exactly(tmp_path):
    from pose_mcore.data.latents import DatasetError, write_latent_dataset

    texts = [torch.zeros(9, 5), torch.randn(9, 5), torch.randn(9, 5)]
    texts[1][4:] = 0
    texts[1][2] = 0  # a zero row inside the prompt stays
    samples = [{"latents": torch.randn(4, 2, 3, 3), "text": t} for t in texts]
    manifest = write_latent_dataset(samples, tmp_path / "d")
    data = LatentDataset(manifest)
    for i, t in enumerate(texts):
        assert torch.equal(data[i]["text"], t)
    rows = [data.sources[e["file"]].shape(e["text"])[0] for e in data.samples]
    assert rows == [1, 4, 9]
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace('"text_length": 9', '"text_length": 3')
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"manifest.jsonl:2: text_length 3 is not an integer of at least the 4"):
        LatentDataset(manifest)


def test_read_ahead_gives_every_clip_in_order(inputs):
    """Threads decoding ahead give the clips (and the failures of bad files) in input order, the same as
    decoding one at a time."""
    import argparse

    from pose_mcore.data.prepare import list_items, read_ahead

    items = list_items(inputs)
    args = argparse.Namespace(frames=5, height=32, width=48, fps=4.0)
    one = list(read_ahead(items, args, 0))
    for depth in (1, 3, 8):  # 8: more threads than clips
        ahead = list(read_ahead(items, args, depth))
        assert [item for item, _ in ahead] == items == [item for item, _ in one]
        for (_, a), (_, b) in zip(ahead, one, strict=True):
            if isinstance(b, Exception):
                assert type(a) is type(b) and str(a) == str(b)
            else:
                assert [np.asarray(f).tolist() for f in a] == [np.asarray(f).tolist() for f in b]
    assert sum(isinstance(f, Exception) for _, f in one) == 3  # the broken, short and uncaptioned files


def test_console_script_prints_no_third_party_notices(tmp_path):
    """``pose-prepare`` as installed: --help and a refusal print no megatron-core notice (the package imported
    megatron-core before the command could filter it: 4 warnings, 8 lines, on every run); the refusal is one line,
    exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("pose-prepare")
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "Warning" not in helped.stderr + helped.stdout, helped.stderr
    refused = subprocess.run([str(script), "--input", str(tmp_path), "--model", str(tmp_path / "none"), "--out",
                              str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [f"pose-prepare: error: {tmp_path / 'none'}: not a diffusers model folder "
                                           "(no model_index.json)"], refused.stderr
    assert not (tmp_path / "out").exists()
