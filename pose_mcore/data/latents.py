"""A dataset of pre-computed latents and conditioning: safetensors shards plus a JSONL manifest.

Each manifest line is one sample: ``{"file": "shard-00000.safetensors", "latents": KEY, "text": KEY, ...}``
with a key for each conditioning field it holds (:data:`pose_mcore.encoders.FIELDS`: ``text_mask``,
``pooled``, ``image_states``, ``condition``, ``first_frame``; paths relative to the manifest). Every
sample holds the same fields. ``negative.safetensors`` beside the manifest holds the encoded negative
(or empty) prompt (``text`` and, for HunyuanVideo, ``text_mask`` and ``pooled``), the unconditional
input of classifier-free guidance. A sample's ``text`` without a ``text_mask`` (Wan: the text encoder's
states with zero rows after the prompt's tokens, which the model attends to as zeros) is stored without
its trailing zero rows and ``"text_length": N`` in its line; it is read back padded with zeros to ``N``
rows, bit for bit what was encoded (a 480p Wan clip's 4 MiB of bf16 text becomes 8 KiB per prompt
token). Masked tokens (``text`` with ``text_mask``, ``glyph`` with ``glyph_mask``: HunyuanVideo, -1.5) are
stored up to their last valid token, ``"<field>_length"`` in the line, and read back with zero rows after it:
what the model computes does not change (a masked token is never attended: the DiT's keys, the
refiner's pair mask and masked mean, the discriminator head), and HunyuanVideo-1.5's 1000 x 3584 LLM states per
prompt (7 MiB in bf16) shrink to its valid tokens. Tensors are read per sample with positioned reads. The manifest,
every shard's header and every key are checked when the dataset is opened, so a missing or malformed
shard fails at once, naming the file, line and key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import Dataset

from pose_mcore.checkpoint.io import CheckpointError, SafetensorsSource, atomic_destination
from pose_mcore.encoders.model import FIELDS, TEXT_FIELDS

TOKEN_FIELDS = ("text", "glyph")
"""Per-token fields stored trimmed: by their mask, or without one (Wan's text) by their trailing zero rows."""
NEGATIVE = "negative.safetensors"
"""The encoded negative prompt, beside the manifest."""


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file, line or key."""


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


class LatentDataset(Dataset):
    def __init__(self, manifest: str | Path) -> None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise DatasetError(f"{manifest}: dataset manifest not found")
        self.root = manifest.parent
        self.samples: list[dict[str, str]] = []
        sources: dict[str, SafetensorsSource] = {}
        self.fields: tuple[str, ...] = ()
        """The fields every sample holds."""
        for n, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{manifest}:{n}: not a JSON object ({e})") from e
            missing = [k for k in ("file", "latents", "text") if k not in entry]
            if missing:
                raise DatasetError(f"{manifest}:{n}: missing field(s) {missing}")
            fields = tuple(k for k in FIELDS if k in entry)
            if self.samples and fields != self.fields:
                raise DatasetError(f"{manifest}:{n}: fields {list(fields)} differ from the first sample's "
                                   f"{list(self.fields)}")
            self.fields = fields
            file = entry["file"]
            if file not in sources:
                sources[file] = self._open(self.root / file, f"{manifest}:{n}")
            keys = set(sources[file].keys())
            for field in fields:
                if entry[field] not in keys:
                    raise DatasetError(f"{manifest}:{n}: key {entry[field]!r} ({field}) is not in {file}")
            for tokens in TOKEN_FIELDS:
                length = entry.get(f"{tokens}_length")
                if length is not None:
                    rows = sources[file].shape(entry[tokens])[0]
                    if not (isinstance(length, int) and length >= rows):
                        raise DatasetError(f"{manifest}:{n}: {tokens}_length {length!r} is not an integer of at "
                                           f"least the {rows} {tokens} rows stored")
            self.samples.append(entry)
        if not self.samples:
            raise DatasetError(f"{manifest}: no samples")
        self.sources = sources
        self.negative: dict[str, torch.Tensor] | None = None
        """The encoded negative prompt (``text`` ...), or None when the dataset has none."""
        if (self.root / NEGATIVE).is_file():
            source = self._open(self.root / NEGATIVE, str(manifest))
            self.negative = {k: _float(source.get(k)) for k in source.keys() if k in TEXT_FIELDS}

    @staticmethod
    def _open(path: Path, where: str) -> SafetensorsSource:
        if not path.is_file():
            raise DatasetError(f"{where}: shard {path} not found")
        try:
            return SafetensorsSource(path, [path])
        except CheckpointError as e:
            raise DatasetError(f"{where}: {e}") from e

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        entry = self.samples[index]
        source = self.sources[entry["file"]]
        out = {field: _float(source.get(entry[field])) for field in self.fields}
        for tokens in TOKEN_FIELDS:
            if f"{tokens}_length" in entry:
                out[tokens] = F.pad(out[tokens], (0, 0, 0, entry[f"{tokens}_length"] - out[tokens].shape[0]))
        if "first_frame" not in out:  # the VAEs are causal: the first latent frame encodes the first frame alone
            out["first_frame"] = out["latents"][:, :1].clone()
        return out


def trim(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``tokens [L, d]`` up to the last position ``mask [L]`` marks valid, or without a mask up to the last row
    that is not all zero (at least one row kept)."""
    valid = (tokens.ne(0).any(dim=-1) if mask is None else mask.ne(0)).nonzero()
    return tokens[: int(valid[-1]) + 1 if len(valid) else 1]


def shard_entries(samples: Iterable[dict[str, torch.Tensor]], path: Path, names: Iterable[str]
                  ) -> list[dict[str, str]]:
    """Write one shard of ``samples`` (named ``names``) atomically; return their manifest entries. Text without
    a mask, and masked tokens, are stored trimmed (see the module's doc)."""
    tensors, entries = {}, []
    for name, sample in zip(names, samples, strict=True):
        entry, sample = {"file": path.name}, dict(sample)
        for tokens in TOKEN_FIELDS:
            if tokens in sample:
                entry[f"{tokens}_length"] = sample[tokens].shape[0]
                sample[tokens] = trim(sample[tokens], sample.get(f"{tokens}_mask"))
        for field in FIELDS:
            if field in sample:
                tensors[entry.setdefault(field, f"{name}.{field}")] = sample[field].contiguous()
        entries.append(entry)
    with atomic_destination(path, overwrite=True) as tmp:
        save_file(tensors, tmp)
    return entries


def write_negative(negative: dict[str, torch.Tensor], folder: Path) -> None:
    """Write the encoded negative prompt beside a manifest (atomically)."""
    with atomic_destination(folder / NEGATIVE, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in negative.items()}, tmp)


def write_latent_dataset(samples: Iterable[dict[str, torch.Tensor]], folder: str | Path, per_shard: int = 256,
                         negative: dict[str, torch.Tensor] | None = None) -> Path:
    """Write samples (``latents``, ``text`` and any other of :data:`FIELDS`) as shards plus a manifest, and the
    ``negative`` prompt's fields when given; return the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    samples, lines = list(samples), []
    for start in range(0, len(samples), per_shard):
        chunk = samples[start:start + per_shard]
        path = folder / f"shard-{start // per_shard:05d}.safetensors"
        lines += [json.dumps(e) for e in shard_entries(chunk, path, (f"{start + i:08d}" for i in range(len(chunk))))]
    if negative is not None:
        write_negative(negative, folder)
    return write_manifest(lines, folder / "manifest.jsonl")


def write_manifest(lines: list[str], manifest: Path) -> Path:
    """Write manifest lines atomically (a reader sees the previous manifest or the whole new one)."""
    with atomic_destination(manifest, overwrite=True) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return manifest
