"""gguf_header: a GGUF file's metadata and tensor table, read without materialising what a scan does not need.

``gguf.GGUFReader`` builds numpy objects for every metadata value: a 24 MB file listing 3M empty tokenizer
strings costs it ~5 GB. Here arrays are skipped (their length is kept, their elements never decoded), strings
are decoded only when short, and every length is checked against the file before it is used, so memory stays
bounded by a small constant per tensor. Layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64
tensor count, u64 metadata count; metadata key/value pairs; tensor infos (name, dims, GGML type, offset);
then the data section at the next multiple of ``general.alignment`` (default 32).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from streamscan.errors import CheckpointError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_STRING = 1 << 20  # longer metadata strings are skipped (kept as their length)


@dataclass(frozen=True)
class ArrayLength:
    """A metadata array, kept only as its element count."""

    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: int
    dims: tuple[int, ...]  # GGUF order (fastest-varying first)
    offset: int  # relative to the data section


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CheckpointError(
                f"{self.path}: GGUF {what} runs past the end of the file (truncated?); re-download it"
            )

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, keep: bool = True) -> str | int:
        n = self.unpack("<Q", what)
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        if not keep or n > MAX_STRING:
            return n
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: GGUF {what} is not UTF-8; re-download the file") from None

    def value(self, kind: int, what: str):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind], what)
        if kind == STRING:
            return self.string(what)
        if kind == ARRAY:
            elem = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if elem in _SCALARS:
                self.need(count * struct.calcsize(_SCALARS[elem]), what)
                self.pos += count * struct.calcsize(_SCALARS[elem])
            elif elem == STRING:
                for _ in range(count):  # lengths only: nothing is decoded or kept
                    n = self.unpack("<Q", what)
                    self.need(n, what)
                    self.pos += n
            elif elem == ARRAY:
                for _ in range(count):
                    self.value(ARRAY, what)
            else:
                raise CheckpointError(f"{self.path}: GGUF {what} has unknown element type {elem}; re-download it")
            return ArrayLength(count)
        raise CheckpointError(f"{self.path}: GGUF {what} has unknown value type {kind}; re-download it")


def read_gguf_header(path: str) -> tuple[dict, list[GgufTensor], int]:
    """(metadata: key -> scalar, str, or ArrayLength; tensors; absolute offset of the data section)."""
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise CheckpointError(f"{path}: an empty file, not GGUF; re-download it") from None
    try:
        cur = _Cursor(buf, path)
        if cur.size < 24 or buf[:4] != b"GGUF":
            raise CheckpointError(f"{path}: not a GGUF file (bad magic); re-download it")
        cur.pos = 4
        version = cur.unpack("<I", "version")
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 or 3); reconvert the file")
        n_tensors = cur.unpack("<Q", "tensor count")
        n_kv = cur.unpack("<Q", "metadata count")
        if n_tensors > cur.size // 28 or n_kv > cur.size // 12:
            raise CheckpointError(f"{path}: GGUF counts exceed what the file can hold (corrupt); re-download it")
        fields: dict = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            kind = cur.unpack("<I", f"metadata {key!r}")
            fields[key] = cur.value(kind, f"metadata {key!r}")
        tensors, seen = [], set()
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            if not isinstance(name, str):
                raise CheckpointError(f"{path}: a GGUF tensor name of {name} bytes; the file is corrupt")
            if name in seen:
                raise CheckpointError(f"{path}: tensor {name!r} appears twice; the file is corrupt, re-download it")
            seen.add(name)
            n_dims = cur.unpack("<I", f"tensor {name!r}")
            if n_dims > 8:
                raise CheckpointError(f"{path}: tensor {name!r} has {n_dims} dimensions; the file is corrupt")
            dims = tuple(cur.unpack("<Q", f"tensor {name!r}") for _ in range(n_dims))
            ggml_type = cur.unpack("<I", f"tensor {name!r}")
            offset = cur.unpack("<Q", f"tensor {name!r}")
            tensors.append(GgufTensor(name, ggml_type, dims, offset))
        align = fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise CheckpointError(f"{path}: GGUF general.alignment {align!r} is not a power of two; corrupt file")
        data = (cur.pos + align - 1) // align * align
        return fields, tensors, data
    finally:
        buf.close()
