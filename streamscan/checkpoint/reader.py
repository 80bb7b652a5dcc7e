"""reader: one tensor (or one expert's slice) at a time, in its stored dtype or dequantized to float32.

The file format's own reader (formats/) reads stored tensors; a quantized weight (FP8 with its scales,
MXFP4 blocks with theirs) is read with its scale tensor and dequantized here (dequant.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from streamscan.checkpoint import dequant
from streamscan.checkpoint.formats import format_for
from streamscan.checkpoint.formats.safetensors import (
    SUFFIX,
    _pread_into,
    byte_range,
    piece_lines,
    read_pieces,
    read_slice,
    read_whole_many,
)
from streamscan.errors import CheckpointError
from streamscan.records import Part, TensorInfo


def read_tensor(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    """The tensor's data as stored (e.g. bfloat16), owned by the caller; with ``part``, only that expert's
    matrix (safetensors slicing reads just its rows; strided or column slices stay within one expert).
    A quantized weight (FP8 with its scales, MXFP4, GGUF) comes dequantized to float32."""
    if info.quant is not None:
        return read_quantized(info, part)
    return format_for(info.shard).read_tensor(info, part)


@dataclass
class Stored:
    """A quantized weight as stored, with its scales: dequantized later on the job's device
    (``dequant.on_device``), so that a GPU receives the FP8/MXFP4 bytes instead of float32."""

    weight: torch.Tensor
    scale: torch.Tensor
    scheme: str
    block: tuple[int, int] | None = None

    def dequantize(self, device="cpu") -> torch.Tensor:
        return dequant.on_device(self.scheme, self.weight, self.scale, self.block, device)

    def pin_memory(self) -> Stored:
        return Stored(self.weight.pin_memory(), self.scale.pin_memory(), self.scheme, self.block)

    @staticmethod
    def dequantize_stack(stored: list[Stored], device="cpu") -> torch.Tensor:
        """The [B, m, n] float32 stack of same-shape stored weights, dequantized on DEVICE: block-scaled FP8
        weights in one pass (dequant.fp8_block_stack, bit for bit each one's own), others one by one."""
        first = stored[0]
        same = (first.scheme, first.block, first.weight.shape, first.scale.shape)
        if first.scheme == "fp8-block" and all(
            (s.scheme, s.block, s.weight.shape, s.scale.shape) == same for s in stored
        ):
            weights = torch.stack([s.weight for s in stored]).to(device, non_blocking=True)
            scales = torch.stack([s.scale for s in stored]).to(device, non_blocking=True)
            return dequant.fp8_block_stack(weights, scales, first.block or (128, 128))
        return torch.stack([s.dequantize(device) for s in stored])


@dataclass(frozen=True)
class Pieces:
    """A huge 2-D safetensors tensor to be read piece by piece while its Gram accumulates (never whole):
    iterating it reads its row bands (more rows than columns) or column strips, each a multiple of
    ``multiple`` rows/columns and about ``piece_bytes`` as stored (formats/safetensors.read_pieces)."""

    info: TensorInfo
    multiple: int
    piece_bytes: int

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.info.shape
        return (m, n)

    def __iter__(self):
        return read_pieces(self.info, self.multiple, self.piece_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes of one piece as stored (the most held at a time)."""
        m, n = self.info.shape
        lines = piece_lines(self.info, self.multiple, self.piece_bytes)
        return min(self.info.nbytes, lines * min(m, n) * self.info.element_size)


def can_read_in_pieces(info: TensorInfo) -> bool:
    """Whether INFO is an unquantized 2-D safetensors tensor stored as one byte range (see :class:`Pieces`)."""
    return (
        info.quant is None
        and len(info.shape) == 2
        and str(info.shard).endswith(SUFFIX)
        and byte_range(info) is not None
    )


STORED_SCHEMES = ("fp8-block", "fp8-scaled", "mxfp4")


def stageable(info: TensorInfo, stored: bool = True) -> bool:
    """Whether the whole of INFO can be read in chunks into a caller's buffers (:func:`read_chunks`): an
    unquantized safetensors tensor stored as one byte range, or (with STORED) a block-scaled or scaled FP8
    one whose weight and scales are."""
    if info.quant is None:
        return str(info.shard).endswith(SUFFIX) and byte_range(info) is not None
    return (
        stored
        and info.quant.scheme in ("fp8-block", "fp8-scaled")
        and stageable(replace(info, quant=None))
        and stageable(info.quant.scale)
    )


def read_chunks(
    infos: list[TensorInfo], take: Callable[[], torch.Tensor], put: Callable[[int, int, torch.Tensor], None]
) -> None:
    """Each whole tensor of INFOS (see :func:`stageable`; a quantized one's bytes as stored) read from its byte
    range in chunks of a caller's buffer: for each chunk ``buffer = take()`` (a flat uint8 tensor, reused),
    the next ``len(buffer)`` bytes at most are read into it, and ``put(i, position, buffer[:n])`` is called
    with INFOS[i] and the byte position of the chunk in that tensor. One open per shard, in file order.
    Raises CheckpointError in one line naming the shard."""
    import os

    by_shard: dict = {}
    for i, info in enumerate(infos):
        where = byte_range(info)
        if where is None:
            raise CheckpointError(f"{info.shard}: {info.stored_name!r}: dtype {info.dtype} is not read by byte range")
        by_shard.setdefault(info.shard, []).append((where[0], i))
    for shard, members in by_shard.items():
        try:
            fd = os.open(shard, os.O_RDONLY)
        except OSError as err:
            raise CheckpointError(f"{shard}: cannot read ({err}); re-download the shard") from None
        try:
            for offset, i in sorted(members):
                size, position = infos[i].nbytes, 0
                while position < size:
                    buffer = take()
                    chunk = buffer[: min(buffer.numel(), size - position)]
                    _pread_into(fd, memoryview(chunk.numpy()), offset + position, infos[i])
                    put(i, position, chunk)
                    position += chunk.numel()
        except OSError as err:
            raise CheckpointError(f"{shard}: cannot read ({err}); re-download the shard") from None
        finally:
            os.close(fd)


def read_stored(info: TensorInfo, part: Part | None = None) -> Stored | torch.Tensor:
    """Like :func:`read_tensor`, but a whole FP8 or MXFP4 weight comes as stored (:class:`Stored`) with its
    scales, not dequantized; everything else (slices, GGUF, unquantized) comes as read_tensor gives it."""
    quant = info.quant
    if quant is None or part is not None or quant.scheme not in STORED_SCHEMES:
        return read_tensor(info, part)
    if quant.scheme == "mxfp4":
        blocks = replace(info, quant=None, shape=(*info.shape[:-1], info.shape[-1] // 32, 16))
        return Stored(read_tensor(blocks), read_tensor(quant.scale), "mxfp4")
    read = format_for(info.shard).read_tensor  # the weight's bytes as stored (read_tensor would dequantize)
    return Stored(read(info), read_tensor(quant.scale), quant.scheme, quant.block)


def read_many(infos: list[TensorInfo], stored: bool = False) -> list[torch.Tensor | Stored]:
    """``read_tensor(info)`` (with STORED ``read_stored(info)``) of each whole tensor of INFOS, the safetensors
    ones and the scales of their FP8 weights read together (formats/safetensors.read_whole_many: one open
    per shard, one allocation); the others one by one. A failure raises: read them one by one to learn
    which (the scheduler does)."""
    out: list = [None] * len(infos)
    plain = [i for i, t in enumerate(infos) if str(t.shard).endswith(SUFFIX) and t.quant is None]
    fp8 = [
        i
        for i, t in enumerate(infos)
        if stored
        and str(t.shard).endswith(SUFFIX)
        and t.quant is not None
        and t.quant.scheme in ("fp8-block", "fp8-scaled")
        and str(t.quant.scale.shard).endswith(SUFFIX)
    ]
    for i, tensor in zip(plain, read_whole_many([infos[i] for i in plain]) if plain else ()):
        out[i] = tensor
    if fp8:
        weights = read_whole_many([infos[i] for i in fp8])
        scales = read_whole_many([infos[i].quant.scale for i in fp8])
        for i, w, s in zip(fp8, weights, scales):
            q = infos[i].quant
            out[i] = Stored(w, s, q.scheme, q.block)
    for i, t in enumerate(infos):
        if out[i] is None:
            out[i] = read_stored(t) if stored else read_tensor(t)
    return out


def read_quantized(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    """A quantized weight and its scale tensor (``info.quant``), read one after the other and dequantized
    to float32: at its peak this holds the stored weight, its scales and the float32 result. With ``part``
    (an expert of a fused MXFP4 tensor) only that expert's blocks and scales are read and dequantized."""
    quant = info.quant
    assert quant is not None
    try:
        if quant.scheme == "mxfp4":
            blocks_shape = (*info.shape[:-1], info.shape[-1] // 32, 16)
            blocks = replace(info, quant=None, shape=blocks_shape)
            if part is None:
                return dequant.mxfp4(read_tensor(blocks), read_tensor(quant.scale))
            if part.index is None or len(info.shape) != 3:
                raise CheckpointError(
                    f"{info.shard}: {info.stored_name!r}: MXFP4 slices are read per expert of a 3-D tensor"
                )
            rows = slice(*part.rows)  # gpt-oss gate/up: every other row of the expert's [2I, H]
            if part.cols == (0, info.shape[2], 1):  # whole rows: dequantize only the rows of this slice
                return dequant.mxfp4(_expert(blocks, part.index)[rows], _expert(quant.scale, part.index)[rows])
            expert = dequant.mxfp4(_expert(blocks, part.index), _expert(quant.scale, part.index))
            matrix = expert[rows, slice(*part.cols)].clone(memory_format=torch.contiguous_format)
            del expert
            return matrix
        if part is not None:
            raise CheckpointError(f"{info.shard}: {info.stored_name!r}: {quant.scheme} expert slices are not supported")
        weight = read_tensor(replace(info, quant=None))
        scale = read_tensor(quant.scale)
        if quant.scheme == "fp8-block":
            return dequant.fp8_block(weight, scale, quant.block or (128, 128))
        if quant.scheme == "fp8-scaled":
            return dequant.fp8_scaled(weight, scale)
    except ValueError as err:  # the scales do not fit the weight
        raise CheckpointError(f"{info.shard}: cannot dequantize {info.stored_name!r}: {err}") from None
    raise CheckpointError(f"{info.shard}: {info.stored_name!r}: unknown quantization scheme {quant.scheme!r}")


def _expert(info: TensorInfo, index: int) -> torch.Tensor:
    """``t[index]`` of a stored tensor (only that expert's pages are touched)."""
    return read_slice(info, slice(index, index + 1))[0]
