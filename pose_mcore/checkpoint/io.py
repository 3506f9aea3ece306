"""Streaming checkpoint I/O: tensor sources that read one tensor (or one slice) at a time, a
safetensors writer that writes tensor by tensor, and atomic destinations.

Nothing here holds a whole model: safetensors files are read per tensor or per slice, torch
pickles (``.pt``/``.pth``) are memory-mapped, and output shards are written as tensors arrive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pose_mcore.faults import fault_point

SAFETENSORS_INDEX_NAMES = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


class CheckpointError(Exception):
    """A checkpoint that cannot be read, converted or loaded; the message names the file, key or value."""


class TensorSource:
    """Named tensors of a checkpoint, read on demand."""

    path: Path

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def get_ranges(self, key: str, dim: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        """The concatenation along ``dim`` of the given ``[start, end)`` ranges of one tensor."""
        full = self.get(key)
        return torch.cat([full.narrow(dim, a, b - a) for a, b in ranges], dim=dim)

    def nbytes(self) -> int:
        return sum(torch.Size(self.shape(k)).numel() * _itemsize(self.dtype(k)) for k in self.keys())


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class SafetensorsSource(TensorSource):
    """One or several safetensors files, read with plain positioned reads (no memory map, so pages of
    tensors already converted do not stay resident): one tensor, or one slice of it, at a time."""

    def __init__(self, path: Path, files: Sequence[Path]) -> None:
        self.path = path
        self._entries: dict[str, tuple[Path, int, torch.dtype, tuple[int, ...]]] = {}
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file}: file listed by the checkpoint does not exist")
            for key, entry in _read_header(file).items():
                self._entries[key] = entry

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][3]

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key][2]

    def _read(self, key: str, start: int, nbytes: int) -> bytearray:
        file, offset, _, _ = self._entries[key]
        buf = bytearray(nbytes)
        with open(file, "rb") as f:
            f.seek(offset + start)
            if f.readinto(buf) != nbytes:
                raise CheckpointError(f"{file}: tensor {key!r} is cut short (truncated file)")
        return buf

    def _tensor(self, buf: bytearray, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        dtype = self.dtype(key)
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def get(self, key: str) -> torch.Tensor:
        shape = self.shape(key)
        return self._tensor(self._read(key, 0, torch.Size(shape).numel() * _itemsize(self.dtype(key))), key, shape)

    def get_ranges(self, key: str, dim: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Reads only the bytes of the slice: one read per range along dim 0, one per leading index
        (e.g. per row of a row-parallel weight) along a later dim."""
        shape, item = self.shape(key), _itemsize(self.dtype(key))
        inner = torch.Size(shape[dim + 1:]).numel() * item  # bytes of one index along ``dim``
        outer = torch.Size(shape[:dim]).numel()
        file, offset, _, _ = self._entries[key]
        pieces = []
        with open(file, "rb") as f:
            for a, b in ranges:
                buf = bytearray(outer * (b - a) * inner)
                view = memoryview(buf)
                for row in range(outer):
                    f.seek(offset + (row * shape[dim] + a) * inner)
                    chunk = view[row * (b - a) * inner:(row + 1) * (b - a) * inner]
                    if f.readinto(chunk) != len(chunk):
                        raise CheckpointError(f"{file}: tensor {key!r} is cut short (truncated file)")
                pieces.append(self._tensor(buf, key, (*shape[:dim], b - a, *shape[dim + 1:])))
        return torch.cat(pieces, dim=dim)


def _header_json(file: Path) -> tuple[dict, int]:
    """A safetensors file's header as read (JSON) and its length; ValueError or struct.error where it is none."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ValueError(f"header of {n} bytes in a file of {size}")
        return json.loads(f.read(n)), n


def safetensors_metadata(file: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (empty where it has none or is not readable: the
    tensors' reader names what is wrong)."""
    try:
        return _header_json(file)[0].get("__metadata__") or {}
    except (OSError, struct.error, ValueError, AttributeError):
        return {}


def _read_header(file: Path) -> dict[str, tuple[Path, int, torch.dtype, tuple[int, ...]]]:
    """``{name: (file, absolute data offset, dtype, shape)}`` from a safetensors header, checked against
    the file size so that a truncated or corrupt file is reported here, naming it."""
    size = file.stat().st_size
    try:
        header, n = _header_json(file)
        by_name = {v: k for k, v in _DTYPES.items()}
        out = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            dtype = by_name[entry["dtype"]]
            shape = tuple(entry["shape"])
            if end - begin != torch.Size(shape).numel() * _itemsize(dtype) or 8 + n + end > size:
                raise ValueError(f"tensor {key!r} lies outside the file or does not match its shape")
            out[key] = (file, 8 + n + begin, dtype, shape)
        return out
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e


class TorchSource(TensorSource):
    """A torch pickle (``.pt``/``.pth``), memory-mapped; its tensors live in ``container`` if given
    (HunyuanVideo's ``module`` or ``ema``), else at the top level or under a common wrapper key."""

    WRAPPERS = ("module", "state_dict", "model")

    def __init__(self, path: Path, container: str | None = None) -> None:
        self.path = path
        try:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
        if container is not None:
            if not isinstance(obj, dict) or container not in obj:
                raise CheckpointError(f"{path}: has no {container!r} entry (keys: {list(obj)[:10]})")
            obj = obj[container]
        elif isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            found = [w for w in self.WRAPPERS if w in obj]
            if not found:
                raise CheckpointError(f"{path}: no tensors at the top level and none of {self.WRAPPERS} "
                                      f"(keys: {list(obj)[:10]})")
            obj = obj[found[0]]
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path}: entries that are not tensors: {bad[:10]}")
        self._state = obj

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


class MemorySource(TensorSource):
    """Tensors already in memory (a model's gathered state), to be written like any other source."""

    def __init__(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        self.path, self._state = Path(path), state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


class PrefixStripped(TensorSource):
    """A source whose keys lose a prefix (``model.diffusion_model.`` of ComfyUI-style Wan files); ``only``: and
    which holds only the keys with it (one expert of a two-expert checkpoint)."""

    def __init__(self, inner: TensorSource, prefix: str, only: bool = False) -> None:
        self.inner, self.prefix, self.path, self.only = inner, prefix, inner.path, only

    def _k(self, key: str) -> str:
        return self.prefix + key

    def keys(self) -> list[str]:
        return [k[len(self.prefix):] if k.startswith(self.prefix) else k for k in self.inner.keys()
                if not self.only or k.startswith(self.prefix)]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(self._k(key))

    def dtype(self, key: str) -> torch.dtype:
        return self.inner.dtype(self._k(key))

    def get(self, key: str) -> torch.Tensor:
        return self.inner.get(self._k(key))

    def get_ranges(self, key: str, dim: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self.inner.get_ranges(self._k(key), dim, ranges)


class Prefixed(TensorSource):
    """Several sources as one, each one's keys under its prefix (two experts' checkpoints as one model's)."""

    def __init__(self, path: Path, inner: dict[str, TensorSource]) -> None:
        self.path, self.inner = path, inner

    def _find(self, key: str) -> tuple[TensorSource, str]:
        for prefix, source in self.inner.items():
            if key.startswith(prefix):
                return source, key[len(prefix):]
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [prefix + k for prefix, source in self.inner.items() for k in source.keys()]

    def shape(self, key: str) -> tuple[int, ...]:
        source, k = self._find(key)
        return source.shape(k)

    def dtype(self, key: str) -> torch.dtype:
        source, k = self._find(key)
        return source.dtype(k)

    def get(self, key: str) -> torch.Tensor:
        source, k = self._find(key)
        return source.get(k)

    def get_ranges(self, key: str, dim: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        source, k = self._find(key)
        return source.get_ranges(k, dim, ranges)


def open_source(path: Path, container: str | None = None) -> TensorSource:
    """The tensors of a checkpoint file or folder (safetensors with or without an index, or a torch pickle)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        for name in SAFETENSORS_INDEX_NAMES:
            index = path / name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (ValueError, KeyError) as e:
                    raise CheckpointError(f"{index}: not a safetensors index (needs 'weight_map'): {e}") from e
                return SafetensorsSource(path, [path / f for f in dict.fromkeys(weight_map.values())])
        files = sorted(path.glob("*.safetensors"))
        if files:
            return SafetensorsSource(path, files)
        pickles = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
        if len(pickles) == 1:
            return TorchSource(pickles[0], container)
        raise CheckpointError(f"{path}: no safetensors files and not exactly one torch checkpoint "
                              f"({[p.name for p in pickles]})")
    if path.suffix == ".safetensors":
        return SafetensorsSource(path, [path])
    if path.suffix in TORCH_SUFFIXES:
        return TorchSource(path, container)
    raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r} (expected .safetensors, "
                          f"{', '.join(TORCH_SUFFIXES)} or a folder)")


class SafetensorsStreamWriter:
    """Writes one safetensors file tensor by tensor: the header (names, dtypes, shapes, offsets) is
    known in advance, so only the tensor being written is in memory."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._expected = []
        for name, dtype, shape in entries:
            size = torch.Size(shape).numel() * _itemsize(dtype)
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._expected.append((name, dtype, tuple(shape)))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self._header, self._length = path, header, len(raw)
        self._file = open(path, "wb")  # closed in close()
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def set_metadata(self, key: str, value: str) -> None:
        """Replace a metadata value known only once the tensors are written (a digest of what was read), in the
        header already on disk: ``value`` must be as long as the placeholder the header was written with."""
        self._header["__metadata__"][key] = value
        raw = json.dumps(self._header, separators=(",", ":")).encode()
        if len(raw) + (-len(raw) % 8) != self._length:
            raise ValueError(f"{self.path}: metadata {key!r} changed the header's length")
        position = self._file.tell()
        self._file.seek(8)
        self._file.write(raw + b" " * (-len(raw) % 8))
        self._file.seek(position)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want = self._expected[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != want:
            got = (name, tensor.dtype, tuple(tensor.shape))
            raise CheckpointError(f"{self.path}: expected tensor {want} next, got {got}")
        self._file.write(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self._expected):
            raise CheckpointError(f"{self.path}: {len(self._expected) - self._next} tensors were never written")


@contextlib.contextmanager
def atomic_destination(dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on failure it is removed,
    so a destination is either the previous one or complete."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(f".{dst.name}.tmp-*"):  # left by a writer that was killed
        _remove(stale)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fault_point("write", dst.name)
        if dst.exists():
            _remove(dst)
        os.replace(tmp, dst)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
