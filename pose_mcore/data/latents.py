"""A dataset of pre-computed latents and condition embeddings: safetensors shards plus a JSONL manifest.

Each manifest line is one sample: ``{"file": "shard-00000.safetensors", "latents": KEY, "text": KEY}``
and, for image-to-video, ``"first_frame": KEY`` (paths relative to the manifest). Tensors are read
per sample with positioned reads. The manifest, every shard's header and every key are checked when
the dataset is opened, so a missing or malformed shard fails at once, naming the file, line and key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from pose_mcore.checkpoint.io import CheckpointError, SafetensorsSource

REQUIRED = ("file", "latents", "text")
OPTIONAL = ("first_frame",)


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file, line or key."""


class LatentDataset(Dataset):
    def __init__(self, manifest: str | Path) -> None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise DatasetError(f"{manifest}: dataset manifest not found")
        self.root = manifest.parent
        self.samples: list[dict[str, str]] = []
        sources: dict[str, SafetensorsSource] = {}
        for n, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{manifest}:{n}: not a JSON object ({e})") from e
            missing = [k for k in REQUIRED if k not in entry]
            if missing:
                raise DatasetError(f"{manifest}:{n}: missing field(s) {missing}")
            file = entry["file"]
            if file not in sources:
                path = self.root / file
                if not path.is_file():
                    raise DatasetError(f"{manifest}:{n}: shard {path} not found")
                try:
                    sources[file] = SafetensorsSource(path, [path])
                except CheckpointError as e:
                    raise DatasetError(f"{manifest}:{n}: {e}") from e
            keys = set(sources[file].keys())
            for field in REQUIRED[1:] + tuple(k for k in OPTIONAL if k in entry):
                if entry[field] not in keys:
                    raise DatasetError(f"{manifest}:{n}: key {entry[field]!r} ({field}) is not in {file}")
            self.samples.append(entry)
        if not self.samples:
            raise DatasetError(f"{manifest}: no samples")
        self.sources = sources

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        entry = self.samples[index]
        source = self.sources[entry["file"]]
        out = {"latents": source.get(entry["latents"]).float(), "text": source.get(entry["text"]).float()}
        if "first_frame" in entry:
            out["first_frame"] = source.get(entry["first_frame"]).float()
        else:
            out["first_frame"] = out["latents"][:, :1].clone()
        return out


def write_latent_dataset(samples: Iterable[dict[str, torch.Tensor]], folder: str | Path,
                         per_shard: int = 256) -> Path:
    """Write samples (``latents``, ``text``, optional ``first_frame``) as shards plus a manifest; return
    the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines, shard, shard_index = [], {}, 0

    def flush() -> None:
        nonlocal shard, shard_index
        if shard:
            save_file(shard, folder / f"shard-{shard_index:05d}.safetensors")
            shard, shard_index = {}, shard_index + 1

    for i, sample in enumerate(samples):
        entry = {"file": f"shard-{shard_index:05d}.safetensors"}
        for field in ("latents", "text", "first_frame"):
            if field in sample:
                key = f"{i:08d}.{field}"
                shard[key] = sample[field].contiguous()
                entry[field] = key
        lines.append(json.dumps(entry))
        if len(shard) >= per_shard * 3:
            flush()
    flush()
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
