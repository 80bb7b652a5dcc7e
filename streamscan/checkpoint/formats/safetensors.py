"""safetensors: headers parsed here (also those read remotely from the Hub), tensors read with safetensors.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes of JSON
mapping each tensor name to its dtype, shape and byte range (relative to the end of the header).

safetensors' ``pread`` backend reads the tensor's bytes into fresh memory: nothing of the shard stays
mapped, so resident memory after a tensor is released goes back to where it was, whatever the model size.
An expert slice of a fused tensor is read through a short-lived mmap instead (see ``_open``): only the
pages of that expert are touched, never the whole fused tensor.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from streamscan.checkpoint.formats.safetensors_header import MAX_HEADER_SIZE, HeaderError
from streamscan.checkpoint.formats.safetensors_header import parse_header as validate_header
from streamscan.errors import CheckpointError
from streamscan.records import Part, ShardInfo, TensorInfo

SUFFIX = ".safetensors"

MAX_HEADER = MAX_HEADER_SIZE  # safetensors' own limit: a decimal 100 MB


def read_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Parse and validate one shard's header (safetensors_header.py: at least as strict as safetensors).
    Raises CheckpointError naming the file, and the tensor where one is at fault, in one line."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes); re-download it")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: corrupt safetensors header (length {length}); re-download it")
            raw = fh.read(length)
    except OSError as err:
        raise CheckpointError(
            f"{path}: cannot read ({err.strerror or err}); check the file and its permissions"
        ) from None
    return parse_header(path, raw, size)


def parse_header(path: Path, raw: bytes, size: int) -> tuple[list[TensorInfo], ShardInfo]:
    """A shard's header JSON (the bytes after the 8-byte length) -> its tensors, with absolute byte ranges.

    The same for a local file and for a header read remotely (hub.py), so both fingerprint alike. Every
    rule safetensors applies is checked here, plus a few stricter ones (duplicate names, control characters
    in names, unknown fields): a shard that safetensors would refuse is refused up front, in one line.
    """
    try:
        entries, _metadata = validate_header(raw, size, str(path))
    except HeaderError as err:
        raise CheckpointError(str(err)) from None
    base = 8 + len(raw)
    tensors = [
        TensorInfo(name, path, dtype, shape, base + begin, base + end) for name, dtype, shape, begin, end in entries
    ]
    digest = hashlib.sha256(raw).hexdigest()
    return tensors, ShardInfo(path, size, digest)


def _open(info: TensorInfo, sliced: bool = False):
    """pread for whole tensors; mmap for expert slices, because safetensors 0.8's pread backend reads the
    whole tensor behind ``get_slice`` (measured: 261 MiB peak for a 4 MiB slice of a 256 MiB fused tensor,
    against 19 MiB through mmap). Only the pages of the slice's expert are touched."""
    if sliced:
        return safe_open(str(info.shard), framework="pt")
    try:
        return safe_open(str(info.shard), framework="pt", backend="pread")
    except TypeError:  # safetensors without the pread backend: fall back to mmap
        return safe_open(str(info.shard), framework="pt")


def read_slice(info: TensorInfo, key) -> torch.Tensor:
    """``stored[key]`` read through a short-lived mapping and copied out now: the I/O happens here, in the
    reading thread, the caller owns a contiguous tensor, and the mapping goes when this returns."""
    try:
        with _open(info, sliced=True) as fh:
            stored = fh.get_slice(info.stored_name)
            if tuple(stored.get_shape()) != info.shape:
                raise CheckpointError(
                    f"{info.shard}: {info.stored_name!r} has shape {tuple(stored.get_shape())}, "
                    f"header says {info.shape}"
                )
            return stored[key].clone(memory_format=torch.contiguous_format)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(
            f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download the shard"
        ) from None


def read_tensor(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    """The tensor's data as stored (e.g. bfloat16), owned by the caller; with ``part``, only that expert's
    matrix (safetensors slicing reads just its rows; strided or column slices stay within one expert)."""
    if part is not None:
        tensor = read_slice(info, part.key)
    else:
        try:
            with _open(info) as fh:
                tensor = fh.get_tensor(info.stored_name)
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{info.shard}: cannot read {info.name!r} ({err}); re-download the shard") from None
    expected = info.shape if part is None else part.shape
    if tuple(tensor.shape) != expected:
        raise CheckpointError(
            f"{info.shard}: {info.name!r} read as {tuple(tensor.shape)}, expected {expected}; re-download the shard"
        )
    return tensor
