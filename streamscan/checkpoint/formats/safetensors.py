"""safetensors: headers validated by safetensors (those read remotely from the Hub by safetensors_header.py),
tensors read by byte range or with safetensors.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes of JSON
mapping each tensor name to its dtype, shape and byte range (relative to the end of the header).

The header is parsed once per run (by the index): a tensor, or an expert slice that is one contiguous
byte range (``t[i]``, ``t[i, a:b]``), is read straight from the byte range its TensorInfo holds, with
``os.preadv`` into fresh memory: no re-open and re-parse of the shard's header per tensor (which cost
seconds per tensor for a shard of thousands of tensors), and nothing of the shard stays mapped, so
resident memory after a tensor is released goes back to where it was, whatever the model size. Other
slices (strided or column ranges) are read with safetensors through a short-lived mmap (see ``_open``):
only the pages of that expert are touched, never the whole fused tensor.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from streamscan.checkpoint.formats.safetensors_header import MAX_HEADER_SIZE, HeaderError, check_header, dtype_bits
from streamscan.errors import CheckpointError
from streamscan.records import DTYPE_BYTES, Part, ShardInfo, TensorInfo

if TYPE_CHECKING:
    import torch

SUFFIX = ".safetensors"

_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype name, or None (torch is imported on first use: commands that
    only read headers and journals, such as status and select, start without it)."""
    import torch

    attr = _TORCH_DTYPES.get(name)
    return getattr(torch, attr, None) if attr else None


def read_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """One shard's tensors, validated by safetensors itself (``safe_open``: dtypes, shapes, offsets that tile
    the data exactly). The header length is checked before the header is read, which is hashed (for the
    fingerprint) as it is read, a block at a time. Raises CheckpointError naming the file in one line."""
    size, length, digest = _hash_header(path)
    base = 8 + length
    shapes: dict = {}  # one tuple per distinct shape (a 900k-entry header has a few dozen)
    tensors = []
    try:
        with safe_open(str(path), framework="numpy") as fh:
            start = 0
            for name in fh.offset_keys():  # safetensors checked that, in this order, the tensors tile the data
                view = fh.get_slice(name)
                dtype, shape = view.get_dtype(), tuple(view.get_shape())
                shape = shapes.setdefault(shape, shape)
                end = start + math.prod(shape) * dtype_bits(dtype) // 8
                tensors.append(TensorInfo(name, path, dtype, shape, base + start, base + end))
                start = end
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({_first_line(err)}); re-download or re-export it"
        ) from None
    if any(t.start == t.end for t in tensors):  # empty tensors at one offset: by name, as check_header lists them
        tensors.sort(key=_name)
        tensors.sort(key=_end)
        tensors.sort(key=_start)
    return tensors, ShardInfo(path, size, digest)


def _hash_header(path: Path) -> tuple[int, int, str]:
    """(file size, header length, sha256 of the header bytes after the 8-byte length); the length is checked
    against safetensors' limit and the file size before any of it is read."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
            if length is None or length > min(MAX_HEADER_SIZE, size - 8):
                raise CheckpointError(
                    f"{path}: not a safetensors file (its header length {length} does not fit its {size} bytes "
                    f"or passes safetensors' {MAX_HEADER_SIZE}-byte limit); re-download it"
                )
            digest = hashlib.sha256()
            left = length
            while left:
                block = fh.read(min(left, 1 << 20))
                if not block:
                    raise CheckpointError(f"{path}: the file ends inside its header; re-download it")
                digest.update(block)
                left -= len(block)
    except OSError as err:
        raise CheckpointError(
            f"{path}: cannot read ({err.strerror or err}); check the file and its permissions"
        ) from None
    return size, length, digest.hexdigest()


def _name(info: TensorInfo) -> str:
    return info.name


def _start(info: TensorInfo) -> int:
    return info.start


def _end(info: TensorInfo) -> int:
    return info.end


def parse_header(path: Path, raw: bytes, size: int) -> tuple[list[TensorInfo], ShardInfo]:
    """A shard's header read remotely (hub.py: the JSON after the 8-byte length, and the file's size) -> its
    tensors, checked as safetensors would check the file (safetensors_header.check_header)."""
    try:
        entries = check_header(raw, size)
    except HeaderError as err:
        raise CheckpointError(f"{path}: not a valid safetensors header ({err}); report it to the repo") from None
    base = 8 + len(raw)
    tensors = [
        TensorInfo(name, path, dtype, shape, base + begin, base + end) for name, dtype, shape, begin, end in entries
    ]
    return tensors, ShardInfo(path, size, hashlib.sha256(raw).hexdigest())


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n")[:1]).strip()[:300] or type(err).__name__


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


def byte_range(info: TensorInfo, key=()) -> tuple[int, tuple[int, ...]] | None:
    """(absolute offset, shape) of ``stored[key]`` if it is one contiguous byte range, else None.

    KEY indexes the leading dimensions with ints and step-1 slices (safetensors' slicing). The range is
    contiguous when every dimension before the first one taking more than one index takes one, and every
    later dimension is whole."""
    width = DTYPE_BYTES.get(info.dtype)
    if not width or torch_dtype(info.dtype) is None:
        return None
    if key == ():  # the whole tensor
        return info.start, tuple(info.shape)
    key = key if isinstance(key, tuple) else (key,)
    shape = info.shape
    if len(key) > len(shape):
        return None
    starts, counts, out = [], [], []
    for i, dim in enumerate(shape):
        k = key[i] if i < len(key) else slice(None)
        if isinstance(k, int) and not isinstance(k, bool):
            if not 0 <= k < dim:
                return None
            starts.append(k)
            counts.append(1)
        elif isinstance(k, slice):
            a, b, step = k.indices(dim)
            if step != 1:
                return None
            starts.append(a)
            counts.append(max(0, b - a))
            out.append(counts[-1])
        else:
            return None
    first = next((i for i, c in enumerate(counts) if c != 1), len(shape))
    if any(counts[i] != shape[i] for i in range(first + 1, len(shape))):
        return None
    offset, stride = 0, width
    for dim, start in zip(reversed(shape), reversed(starts)):
        offset += start * stride
        stride *= dim
    return info.start + offset, tuple(out)


def read_range(info: TensorInfo, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """SHAPE elements of INFO's dtype from byte OFFSET of its shard, into fresh memory the caller owns."""
    nbytes = math.prod(shape) * DTYPE_BYTES[info.dtype]
    if offset < info.start or offset + nbytes > info.end:
        raise CheckpointError(f"{info.shard}: {info.stored_name!r}: byte range outside the tensor")
    import torch

    buf = torch.empty(nbytes, dtype=torch.uint8)
    try:
        fd = os.open(info.shard, os.O_RDONLY)
        try:
            _pread_into(fd, memoryview(buf.numpy()), offset, info)
        finally:
            os.close(fd)
    except OSError as err:
        raise CheckpointError(
            f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download the shard"
        ) from None
    return buf.view(torch_dtype(info.dtype)).reshape(shape)


def _pread_into(fd: int, view: memoryview, offset: int, info: TensorInfo) -> None:
    """Fill VIEW from byte OFFSET of the open shard FD (INFO's): a short read is a shard truncated since it
    was indexed."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CheckpointError(
                f"{info.shard}: ends inside {info.stored_name!r} (truncated since it was indexed?); "
                "re-download the shard"
            )
        got += n


def read_whole_many(infos: list[TensorInfo]) -> list[torch.Tensor]:
    """Each whole tensor of INFOS, as :func:`read_tensor` gives it, read into one allocation with one open per
    shard (the members of a batched job: 256 tiny matrices cost more in opens and allocations than in bytes).
    The tensors are views of that allocation, freed when the last goes."""
    import torch

    spans = []
    for info in infos:
        where = byte_range(info)
        if where is None:
            raise CheckpointError(f"{info.shard}: {info.stored_name!r}: dtype {info.dtype} is not read by byte range")
        spans.append(where[0])
    sizes = [info.nbytes for info in infos]
    buf = torch.empty(sum(sizes), dtype=torch.uint8)
    view = memoryview(buf.numpy())
    starts = [0] * len(infos)
    for i in range(1, len(infos)):
        starts[i] = starts[i - 1] + sizes[i - 1]
    by_shard: dict = {}
    for i, info in enumerate(infos):
        by_shard.setdefault(info.shard, []).append(i)
    for shard, members in by_shard.items():
        members.sort(key=spans.__getitem__)  # in file order
        try:
            fd = os.open(shard, os.O_RDONLY)
        except OSError as err:
            raise CheckpointError(f"{shard}: cannot read ({err}); re-download the shard") from None
        try:
            for i in members:
                _pread_into(fd, view[starts[i] : starts[i] + sizes[i]], spans[i], infos[i])
        except OSError as err:
            raise CheckpointError(f"{shard}: cannot read ({err}); re-download the shard") from None
        finally:
            os.close(fd)
    return [
        buf[a : a + size].view(torch_dtype(info.dtype)).reshape(info.shape)
        for a, size, info in zip(starts, sizes, infos)
    ]


def read_slice(info: TensorInfo, key) -> torch.Tensor:
    """``stored[key]``, owned by the caller: by byte range where it is contiguous, else through a
    short-lived mapping copied out now (the I/O happens here, in the reading thread, and the mapping goes
    when this returns)."""
    where = byte_range(info, key)
    if where is not None:
        return read_range(info, *where)
    try:
        with _open(info, sliced=True) as fh:
            stored = fh.get_slice(info.stored_name)
            if tuple(stored.get_shape()) != info.shape:
                raise CheckpointError(
                    f"{info.shard}: {info.stored_name!r} has shape {tuple(stored.get_shape())}, "
                    f"header says {info.shape}"
                )
            import torch

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
    elif (where := byte_range(info)) is not None:
        tensor = read_range(info, *where)
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


def piece_lines(info: TensorInfo, multiple: int, piece_bytes: int) -> int:
    """Rows (more rows than columns) or columns per piece of :func:`read_pieces`."""
    m, n = info.shape
    line = (n if m > n else m) * DTYPE_BYTES[info.dtype]  # bytes of one row (bands) or of one column (strips)
    return max(1, piece_bytes // max(line, 1) // multiple) * multiple


def read_pieces(info: TensorInfo, multiple: int, piece_bytes: int):
    """A 2-D tensor as consecutive pieces in its stored dtype, read straight from its byte range: row bands
    if it has more rows than columns, else column strips (one pread per row), each a multiple of MULTIPLE
    rows/columns and about PIECE_BYTES (never less than MULTIPLE), the last one what remains. Only one piece
    is in memory at a time: the caller's Gram accumulates from them (compute.spectrum.score_pieces)."""
    if len(info.shape) != 2 or byte_range(info) is None:
        raise CheckpointError(f"{info.shard}: {info.stored_name!r} cannot be read in pieces (not a 2-D tensor)")
    import torch

    m, n = info.shape
    width = DTYPE_BYTES[info.dtype]
    rows = m > n
    count = piece_lines(info, multiple, piece_bytes)
    total = m if rows else n
    if rows:
        for r in range(0, total, count):
            r1 = min(total, r + count)
            yield read_range(info, info.start + r * n * width, (r1 - r, n))
        return
    try:
        fd = os.open(info.shard, os.O_RDONLY)
    except OSError as err:
        raise CheckpointError(
            f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download the shard"
        ) from None
    try:
        for c in range(0, total, count):
            w = min(total, c + count) - c
            line = w * width
            buf = torch.empty(m * line, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            for i in range(m):
                offset = info.start + (i * n + c) * width
                if os.preadv(fd, [view[i * line : (i + 1) * line]], offset) != line:
                    raise CheckpointError(
                        f"{info.shard}: ends inside {info.stored_name!r} (truncated since it was indexed?); "
                        "re-download the shard"
                    )
            yield buf.view(torch_dtype(info.dtype)).reshape(m, w)
    except OSError as err:
        raise CheckpointError(
            f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download the shard"
        ) from None
    finally:
        os.close(fd)
