"""Sharded checkpoints: every rank writes the pieces it holds, any layout reads them back.

A piece is a rank's part of one logical tensor (a role's weight, an optimiser state of one parameter):
its tensor-parallel slice (as megatron-core's attributes on the parameter describe it, see
``parallel/sharding.py``), or a flat range of that slice (the distributed optimizer's shard of a
bucket). Each rank writes its pieces into its own safetensors file, tensor by tensor, with no
communication; a piece replicated over data-parallel ranks is written by one of them (in turn, so the
writing is spread), one replicated over tensor-parallel ranks by TP rank 0. ``index.json`` (rank 0,
from every rank's list) says for every key its whole shape, how it was split (dim, fused groups, TP
size) and where each piece is.

Reading is layout-independent: a rank asks for its slice of a key under the current TP size and gets
it from the overlapping pieces only (the old slices it intersects, read by range where they are whole
slices, assembled from their flat ranges where they are not). Memory beyond the result is one old
slice. So a run saved at TP=2 x DP=2 resumes at TP=1, and no rank ever holds a whole role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from pose_mcore.checkpoint.io import CheckpointError, SafetensorsSource, SafetensorsStreamWriter
from pose_mcore.parallel.sharding import full_shape, local_ranges, partition

INDEX = "index.json"


@dataclass
class Piece:
    """This rank's part of the logical tensor ``key``."""

    key: str
    tensor: torch.Tensor
    """The data: the TP slice of ``param`` (shape of ``param``), or ``flat`` of it flattened."""
    param: torch.Tensor
    """The local parameter whose tensor-parallel layout the piece follows."""
    flat: tuple[int, int] | None = None
    """The range of the flattened TP slice the piece holds (a distributed-optimizer shard), else None:
    the whole slice, the same on every data-parallel rank."""


def save_pieces(folder: Path, pieces: list[Piece]) -> None:
    """Write this rank's ``pieces`` into ``folder`` (every rank calls this with its own list, whole-slice
    pieces in the same order on every rank); rank 0 writes the index."""
    rank = dist.get_rank()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    dp_size = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    file = f"pieces-{rank:05d}.safetensors"
    mine, records, turn = [], [], 0
    for p in pieces:
        where = partition(p.param, p.key)
        if p.flat is None:
            writer, turn = turn % dp_size, turn + 1
            if writer != dp_rank:
                continue
        if where is None and tp_rank != 0:
            continue
        mine.append(p)
        shape = full_shape(p.param, p.key)
        records.append({"key": p.key, "file": file, "tp_rank": tp_rank, "flat": p.flat, "shape": list(shape),
                        "dtype": str(p.tensor.dtype).removeprefix("torch."),
                        "split": None if where is None else list(where)})
    writer = SafetensorsStreamWriter(folder / file, [(p.key, p.tensor.dtype, tuple(p.tensor.shape)) for p in mine])
    for p in mine:
        writer.write(p.key, p.tensor)
    writer.close()
    everyone: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, records)
    if rank != 0:
        return
    index: dict[str, dict] = {}
    tp = parallel_state.get_tensor_model_parallel_world_size()
    for record in (r for rs in everyone for r in rs):
        entry = index.setdefault(record["key"], {"shape": record["shape"], "dtype": record["dtype"],
                                                 "split": record["split"],
                                                 "tensor_parallel": tp,
                                                 "pieces": []})
        entry["pieces"].append({"file": record["file"], "tp_rank": record["tp_rank"], "flat": record["flat"]})
    (folder / INDEX).write_text(json.dumps({"tensors": index}, indent=1))


class ShardedReader:
    """Reads this rank's slices of a sharded checkpoint under the current tensor-parallel layout."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.index: dict[str, dict] = json.loads((folder / INDEX).read_text())["tensors"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{folder / INDEX}: not a sharded checkpoint index ({e})") from e
        self._sources: dict[str, SafetensorsSource] = {}
        self._assembled: tuple[tuple[str, int], torch.Tensor] | None = None  # the last old slice built

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.index if k.startswith(prefix)]

    def local(self, key: str, param: torch.Tensor) -> torch.Tensor:
        """This rank's slice of ``key``, shaped like the local ``param`` (whose attributes say the layout)."""
        if key not in self.index:
            raise CheckpointError(f"{self.folder}: the checkpoint has no tensor {key!r}")
        entry = self.index[key]
        shape = tuple(entry["shape"])
        try:
            where = local_ranges(param, shape, key)
        except ValueError as e:
            raise CheckpointError(f"{self.folder}: {e}") from e
        if (where is None) != (entry["split"] is None) or (where is not None and where[0] != entry["split"][0]):
            raise CheckpointError(f"{self.folder}: {key!r} was saved split as {entry['split']}; the model splits it "
                                  f"as {where}")
        if where is None:
            out = self._old_slice(key, 0)
        else:
            dim, ranges = where
            groups, old_tp = entry["split"][1], entry["tensor_parallel"]
            parts = []
            for (a, b), start, old_start, size in zip(ranges, accumulate([0, *groups]),
                                                      accumulate([0, *(g // old_tp for g in groups)]), groups,
                                                      strict=False):
                piece = size // old_tp
                for r in range((a - start) // piece, (b - start - 1) // piece + 1):
                    lo, hi = max(a, start + r * piece), min(b, start + (r + 1) * piece)
                    offset = old_start + lo - start - r * piece
                    parts.append(self._old_part(key, r, offset, offset + hi - lo, dim))
            out = torch.cat(parts, dim=dim)
        if tuple(out.shape) != tuple(param.shape):
            raise CheckpointError(f"{self.folder}: {key!r} gives {tuple(out.shape)} on this rank; the model needs "
                                  f"{tuple(param.shape)}")
        return out

    def _source(self, file: str) -> SafetensorsSource:
        if file not in self._sources:
            self._sources[file] = SafetensorsSource(self.folder / file, [self.folder / file])
        return self._sources[file]

    def _whole_piece(self, key: str, tp_rank: int) -> dict | None:
        """Old TP rank ``tp_rank``'s piece of ``key`` that holds its whole slice, if one was written."""
        return next((p for p in self.index[key]["pieces"] if p["tp_rank"] == tp_rank and p["flat"] is None), None)

    def _old_part(self, key: str, tp_rank: int, lo: int, hi: int, dim: int) -> torch.Tensor:
        """Indices ``lo:hi`` along ``dim`` of old TP rank ``tp_rank``'s slice of ``key``: read by range from a
        whole-slice piece."""
        whole = self._whole_piece(key, tp_rank)
        if whole is not None:
            return self._source(whole["file"]).get_ranges(key, dim, [(lo, hi)])
        return self._old_slice(key, tp_rank).narrow(dim, lo, hi - lo)

    def _old_slice(self, key: str, tp_rank: int) -> torch.Tensor:
        """Old TP rank ``tp_rank``'s whole slice of ``key``: its whole-slice piece, or its flat pieces put
        together (kept until another slice is asked for: a rank's slices are read one after another)."""
        whole = self._whole_piece(key, tp_rank)
        if whole is not None:
            return self._source(whole["file"]).get(key)
        if self._assembled is None or self._assembled[0] != (key, tp_rank):
            self._assembled = None  # free the previous one first
            entry = self.index[key]
            shape = list(entry["shape"])
            if entry["split"] is not None:
                shape[entry["split"][0]] //= entry["tensor_parallel"]
            flat = torch.empty(torch.Size(shape).numel(), dtype=getattr(torch, entry["dtype"]))
            covered = 0
            for p in entry["pieces"]:
                if p["tp_rank"] != tp_rank:
                    continue
                a, b = p["flat"]
                flat[a:b] = self._source(p["file"]).get(key)
                covered += b - a
            if covered != flat.numel():
                raise CheckpointError(f"{self.folder}: the pieces of {key!r} (TP rank {tp_rank}) cover {covered} of "
                                      f"{flat.numel()} elements")
            self._assembled = ((key, tp_rank), flat.view(shape))
        return self._assembled[1]
