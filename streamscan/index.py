"""index: shard headers and the weight map, without touching tensor data.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes of JSON
mapping each tensor name to its dtype, shape and byte range (relative to the end of the header).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .source import ModelSource

MAX_HEADER = 100 * 1024 * 1024

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: Path
    dtype: str  # safetensors dtype; a GGML type name (Q4_K, ...) in a GGUF file; MXFP4 for block/scale pairs
    shape: tuple[int, ...]  # [out, in] for matrices; the dequantized shape of a quantized weight
    start: int  # absolute byte offset in the shard
    end: int
    key: str | None = None  # the name in the file, where it differs from ``name`` (GGUF, MXFP4 *_blocks)
    quant: Quant | None = None  # how it dequantizes, with the scale tensor read beside it

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_name(self) -> str:
        return self.key or self.name

    @property
    def dequantized(self) -> bool:
        """Whether reading it yields float32 computed from a quantized form (not the stored dtype)."""
        return self.quant is not None or (self.shard.suffix == ".gguf" and self.dtype not in DTYPE_BYTES)

    @property
    def element_size(self) -> int:
        """Bytes per element of the tensor the reader returns."""
        return 4 if self.dequantized else DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class Quant:
    """A quantized weight's scheme and the scale tensor read with it (quant.py pairs them).

    scheme: ``fp8-block`` (scale per ``block`` of [rows, cols]), ``fp8-scaled`` (per tensor or output
    channel) or ``mxfp4`` (E8M0 scale per 32 values; the TensorInfo is the ``*_blocks`` tensor)."""

    scheme: str
    scale: TensorInfo
    block: tuple[int, int] | None = None


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    size: int
    header_sha256: str


@dataclass(frozen=True)
class CheckpointIndex:
    source: ModelSource
    tensors: tuple[TensorInfo, ...]
    shards: tuple[ShardInfo, ...]

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)


def read_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Parse one shard's header. Raises CheckpointError naming the file on any inconsistency."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes); re-download it")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: corrupt safetensors header (length {length}); re-download it")
        raw = fh.read(length)
    return parse_header(path, raw, size)


def parse_header(path: Path, raw: bytes, size: int) -> tuple[list[TensorInfo], ShardInfo]:
    """A shard's header JSON (the bytes after the 8-byte length) -> its tensors, with absolute byte ranges.

    The same for a local file and for a header read remotely (hub.py), so both fingerprint alike.
    """
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err}); re-download it") from None
    base = 8 + len(raw)
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for {name!r}; re-download it") from None
        width = DTYPE_BYTES.get(dtype)
        expected = math.prod(shape) * width if width else None
        if not 0 <= begin <= end or base + end > size or (expected is not None and end - begin != expected):
            raise CheckpointError(
                f"{path}: tensor {name!r} lies outside the file or has the wrong size (truncated?); re-download it"
            )
        tensors.append(TensorInfo(name, path, dtype, shape, base + begin, base + end))
    digest = hashlib.sha256(raw).hexdigest()
    return tensors, ShardInfo(path, size, digest)


def _shard_header(source: ModelSource, path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Local shards are read from disk; a Hub shard not downloaded yet is read remotely (headers only)."""
    if source.hub is not None and not path.exists():
        raw, size = source.hub.header(path.name)
        return parse_header(path, raw, size)
    return read_any_header(path)


def read_any_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """A local shard's tensors whatever its format: safetensors, GGUF or PyTorch zip (formats.py)."""
    if path.suffix == ".safetensors":
        return read_header(path)
    from .formats import read_other_header

    return read_other_header(path)


def build_index(source: ModelSource) -> CheckpointIndex:
    """Read every shard header; check that the index's weight map agrees with them."""
    tensors: list[TensorInfo] = []
    shards: list[ShardInfo] = []
    seen: dict[str, Path] = {}
    for path in source.files:
        found, shard = _shard_header(source, path)
        shards.append(shard)
        for t in found:
            if t.name in seen:
                raise CheckpointError(f"{path}: tensor {t.name!r} also appears in {seen[t.name]}; remove the stray shard")
            seen[t.name] = path
            tensors.append(t)
    if source.index_file is not None:
        weight_map = json.loads(source.index_file.read_text())["weight_map"]
        absent = [n for n, f in weight_map.items() if seen.get(n) != source.root / f]
        if absent:
            raise CheckpointError(
                f"{source.index_file}: {absent[0]!r} is not in {weight_map[absent[0]]} "
                f"({len(absent)} such); the index and shards disagree, re-download them"
            )
    return CheckpointIndex(source, tuple(tensors), tuple(shards))
