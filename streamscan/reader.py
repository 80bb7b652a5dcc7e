"""read: one tensor at a time from its shard, in its stored dtype, without keeping pages mapped.

safetensors' ``pread`` backend reads the tensor's bytes into fresh memory: nothing of the shard stays
mapped, so resident memory after a tensor is released goes back to where it was, whatever the model size.
"""
from __future__ import annotations

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from .index import TensorInfo

def _open(info: TensorInfo):
    try:
        return safe_open(str(info.shard), framework="pt", backend="pread")
    except TypeError:  # safetensors without the pread backend: fall back to mmap
        return safe_open(str(info.shard), framework="pt")


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """The tensor's data as stored (e.g. bfloat16), owned by the caller."""
    try:
        with _open(info) as fh:
            tensor = fh.get_tensor(info.name)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{info.shard}: cannot read {info.name!r} ({err}); re-download the shard") from None
    if tuple(tensor.shape) != info.shape:
        raise CheckpointError(f"{info.shard}: {info.name!r} has shape {tuple(tensor.shape)}, header says {info.shape}")
    return tensor
