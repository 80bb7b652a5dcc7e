"""read: one tensor at a time from its shard, in its stored dtype, without keeping pages mapped.

safetensors' ``pread`` backend reads the tensor's bytes into fresh memory: nothing of the shard stays
mapped, so resident memory after a tensor is released goes back to where it was, whatever the model size.
An expert slice of a fused tensor is read through a short-lived mmap instead (see ``_open``): only the
pages of that expert are touched, never the whole fused tensor.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from . import dequant
from .index import TensorInfo
from .moe import Part

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


def read_tensor(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    """The tensor's data as stored (e.g. bfloat16), owned by the caller; with ``part``, only that expert's
    matrix (safetensors slicing reads just its rows; strided or column slices stay within one expert).
    A quantized weight (FP8 with its scales, MXFP4, GGUF) comes dequantized to float32."""
    if info.quant is not None:
        return read_quantized(info, part)
    if info.shard.suffix != ".safetensors":
        from .formats import read_other_tensor

        return read_other_tensor(info, part)
    if part is not None:
        tensor = _read_slice(info, part.key)
    else:
        try:
            with _open(info) as fh:
                tensor = fh.get_tensor(info.stored_name)
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{info.shard}: cannot read {info.name!r} ({err}); re-download the shard") from None
    expected = info.shape if part is None else part.shape
    if tuple(tensor.shape) != expected:
        raise CheckpointError(f"{info.shard}: {info.name!r} read as {tuple(tensor.shape)}, expected {expected}; re-download the shard")
    return tensor


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
                raise CheckpointError(f"{info.shard}: {info.stored_name!r}: MXFP4 slices are read per expert of a 3-D tensor")
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
    return _read_slice(info, slice(index, index + 1))[0]


def _read_slice(info: TensorInfo, key) -> torch.Tensor:
    """``stored[key]`` read through a short-lived mapping and copied out now: the I/O happens here, in the
    reading thread, the caller owns a contiguous tensor, and the mapping goes when this returns."""
    try:
        with _open(info, sliced=True) as fh:
            stored = fh.get_slice(info.stored_name)
            if tuple(stored.get_shape()) != info.shape:
                raise CheckpointError(f"{info.shard}: {info.stored_name!r} has shape {tuple(stored.get_shape())}, "
                                      f"header says {info.shape}")
            return stored[key].clone(memory_format=torch.contiguous_format)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download the shard") from None
