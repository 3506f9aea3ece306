"""pose-sample end to end (MP4 and latents written, bad requests refused) and the multi-rank paths:
pose-prepare over 2 ranks equals 1 rank; TP=2 sampling equals TP=1."""

from __future__ import annotations

import json

import av
import pytest
import torch
from conftest import assert_close_rel, torchrun
from safetensors.torch import load_file
from test_encoders import FRAMES, HEIGHT, PHOTO, PROMPT, TEXT_LEN, WIDTH, first_frame, transformer
from test_prepare import SIZE, _prepare, inputs  # noqa: F401 - the clips fixture

from pose_mcore.checkpoint.convert import import_checkpoint
from pose_mcore.data.latents import LatentDataset
from pose_mcore.data.video import fit
from pose_mcore.inference.sample import main as sample

KIND = "wan-i2v"


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("generator")
    transformer(KIND).save_pretrained(root / "diffusers")
    import_checkpoint(root / "diffusers", root / "pose")
    image = root / "first.png"
    first_frame().save(image)
    return root / "pose", image


def _sample_args(model_folders, generator, out, *extra) -> list[str]:
    checkpoint, image = generator
    return ["--checkpoint", str(checkpoint), "--model", str(model_folders[KIND]), "--prompt", PROMPT, "--image",
            str(image), "--height", str(HEIGHT), "--width", str(WIDTH), "--frames", str(FRAMES), "--seed", "11",
            "--max-sequence-length", str(TEXT_LEN[KIND]), "--out", str(out), "--save-latents", *extra]


def test_sample_writes_the_video_and_its_latents(model_folders, generator, tmp_path, capsys):
    assert sample(_sample_args(model_folders, generator, tmp_path / "video.mp4")) == 0
    with av.open(str(tmp_path / "video.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    latents = load_file(tmp_path / "video.safetensors")["latents"]
    assert latents.shape == (4, 2, HEIGHT // 8, WIDTH // 8) and latents.abs().max() > 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "image": str(generator[1])}) + "\n"
                       + json.dumps({"prompt": "a cat runs", "image": str(generator[1])}) + "\n")
    args = _sample_args(model_folders, generator, tmp_path / "many")
    args[args.index("--prompt"):args.index("--prompt") + 2] = ["--prompts", str(prompts)]
    assert sample(args) == 0
    first = load_file(tmp_path / "many" / "00000.safetensors")["latents"]
    assert torch.equal(first, latents)  # line 0 takes --seed
    assert not torch.equal(load_file(tmp_path / "many" / "00001.safetensors")["latents"], latents)
    args[args.index("--out") + 1] = str(tmp_path / "shard")  # node 1 of 2: line 1 only, its name and seed kept
    assert sample([*args, "--shard", "1/2"]) == 0
    assert sorted(p.name for p in (tmp_path / "shard").iterdir()) == ["00001.mp4", "00001.safetensors"]
    assert torch.equal(load_file(tmp_path / "shard" / "00001.safetensors")["latents"],
                       load_file(tmp_path / "many" / "00001.safetensors")["latents"])
    capsys.readouterr()
    assert sample([*args, "--shard", "2/2"]) == 2 and "--shard 2/2: need 0 <= K < N" in capsys.readouterr().err
    capsys.readouterr()
    args = _sample_args(model_folders, generator, tmp_path / "x.mp4")
    del args[args.index("--image"):args.index("--image") + 2]
    assert sample(args) == 2 and "is image-to-video: give --image" in capsys.readouterr().err
    assert sample(_sample_args(model_folders, generator, tmp_path / "x.mp4", "--frames", "6")) == 2
    assert "4k+1" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    assert sample(_sample_args(model_folders, generator, tmp_path / "x.mp4", "--vae-tile", "20")) == 2
    assert "--vae-tile 20: must be a positive multiple" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_image_fit_reaches_the_encoders(model_folders, generator, tmp_path):
    """A first frame of another size: the pipeline's resize by default, ``--image-fit crop`` the same video as
    the image cropped beforehand."""
    photo, cropped = tmp_path / "photo.png", tmp_path / "cropped.png"
    first_frame(pixels=PHOTO).save(photo)
    fit(first_frame(pixels=PHOTO), HEIGHT, WIDTH).save(cropped)

    def latents(image, *extra) -> torch.Tensor:
        args = _sample_args(model_folders, generator, tmp_path / f"{image.stem}{len(extra)}.mp4", *extra)
        args[args.index("--image") + 1] = str(image)
        assert sample(args) == 0
        return load_file(tmp_path / f"{image.stem}{len(extra)}.safetensors")["latents"]

    resized = latents(photo)
    assert torch.equal(latents(photo, "--image-fit", "crop"), latents(cropped))
    assert not torch.allclose(resized, latents(cropped), atol=1e-3)


@pytest.mark.slow
def test_two_ranks_prepare_and_sample_tensor_parallel(model_folders, generator, inputs, tmp_path):  # noqa: F811
    assert _prepare(model_folders, KIND, inputs, tmp_path / "one", "--per-shard", "1") == 0
    assert sample(_sample_args(model_folders, generator, tmp_path / "tp1.mp4")) == 0
    prepare_args = ["--input", str(inputs), "--model", str(model_folders[KIND]), "--out", str(tmp_path / "two"), *SIZE,
                    "--per-shard", "1", "--max-sequence-length", "12", "--negative-prompt", "blurry static"]
    bad = _sample_args(model_folders, generator, tmp_path / "bad.mp4")
    bad[bad.index("--image") + 1] = str(tmp_path / "missing.png")  # read by rank 0 only
    torchrun("prepare_sample.py", *prepare_args, "--", *_sample_args(model_folders, generator, tmp_path / "tp2.mp4"),
             "--", *bad, timeout=240)
    assert not (tmp_path / "bad.mp4").exists()
    assert not list((tmp_path / "two-bad").glob("shard-*")) and not (tmp_path / "two-bad" / "negative.safetensors").exists()
    one, two = (LatentDataset(tmp_path / d / "manifest.jsonl") for d in ("one", "two"))
    assert len(one) == len(two) == 4
    for i in range(4):
        for field in one.fields:
            assert torch.equal(one[i][field], two[i][field]), (i, field)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert len(report["skipped"]) == 3
    tp1, tp2 = (load_file(tmp_path / f"{n}.safetensors")["latents"] for n in ("tp1", "tp2"))
    assert_close_rel(tp2, tp1, 1e-5)


@pytest.mark.parametrize("other", ["hunyuan-t2v", "wan-ti2v"])
def test_a_generator_with_another_models_folder_is_refused(model_folders, generator, tmp_path, other):
    """A Wan generator with a HunyuanVideo folder (another family), or with Wan2.2's folder (another VAE, 48-channel
    latents): pose-sample as installed says so in one line naming both, exit 2, nothing written (it ended in a
    traceback inside the conditioning)."""
    import subprocess
    import sys
    from pathlib import Path

    args = _sample_args(model_folders, generator, tmp_path / "x.mp4")
    args[args.index("--model") + 1] = str(model_folders[other])
    if other == "wan-ti2v":  # a size its 16x VAE takes
        args[args.index("--height") + 1], args[args.index("--width") + 1] = "64", "96"
    script = Path(sys.executable).with_name("pose-sample")
    proc = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pose-sample: error: --checkpoint {generator[0]} "), proc.stderr
    assert str(model_folders[other]) in lines[0] and not (tmp_path / "x.mp4").exists()
