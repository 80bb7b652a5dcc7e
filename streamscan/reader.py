"""read: one tensor at a time from its shard, in its stored dtype, without keeping pages mapped.

safetensors' ``pread`` backend reads the tensor's bytes into fresh memory: nothing of the shard stays
mapped, so resident memory after a tensor is released goes back to where it was, whatever the model size.
An expert slice of a fused tensor is read through a short-lived mmap instead (see ``_open``): only the
pages of that expert are touched, never the whole fused tensor.
"""
from __future__ import annotations

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
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
    matrix (safetensors slicing reads just its rows; strided or column slices stay within one expert)."""
    try:
        with _open(info, sliced=part is not None) as fh:
            if part is None:
                tensor = fh.get_tensor(info.name)
            else:
                stored = fh.get_slice(info.name)
                if tuple(stored.get_shape()) != info.shape:
                    raise CheckpointError(f"{info.shard}: {info.name!r} has shape {tuple(stored.get_shape())}, "
                                          f"header says {info.shape}")
                # a view into the mapping: copy it out now (the I/O happens here, in the reading thread,
                # and the caller owns a contiguous matrix; the mapping goes when the view does)
                tensor = stored[part.key].clone(memory_format=torch.contiguous_format)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{info.shard}: cannot read {info.name!r} ({err}); re-download the shard") from None
    expected = info.shape if part is None else part.shape
    if tuple(tensor.shape) != expected:
        raise CheckpointError(f"{info.shard}: {info.name!r} read as {tuple(tensor.shape)}, expected {expected}; re-download the shard")
    return tensor
