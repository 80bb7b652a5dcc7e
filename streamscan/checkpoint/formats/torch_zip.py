"""torch_zip: PyTorch ``.bin``/``.pt``/``.pth`` checkpoints in the zip format.

``torch.load(mmap=True, weights_only=True)`` maps the file and unpickles only tensors and plain containers
(never arbitrary objects); the data is touched only when one tensor is copied out. Legacy (non-zip) files
cannot be memory-mapped and are refused.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch

from streamscan.errors import CheckpointError
from streamscan.records import Part, ShardInfo, TensorInfo

SUFFIXES = (".bin", ".pt", ".pth")


TORCH_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def _torch_load(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: a legacy (non-zip) PyTorch file cannot be memory-mapped; "
            "re-save it with torch.save (zip format) or convert it to safetensors"
        )
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # weights_only refuses arbitrary objects; corrupt zips raise RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load tensors safely ({first}); convert it to safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict of tensors; convert it to safetensors"
        )
    return state


def _torch_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    state = _torch_load(path)
    tensors = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        dtype = TORCH_DTYPES.get(value.dtype, str(value.dtype).removeprefix("torch."))
        nbytes = value.numel() * value.element_size()
        # torch.load locates the data itself; the byte range records only the tensor's size
        tensors.append(TensorInfo(str(name), path, dtype, tuple(value.shape), 0, nbytes))
    del state
    with zipfile.ZipFile(path) as zf:
        pickles = sorted(n for n in zf.namelist() if n.endswith("data.pkl"))
        digest = hashlib.sha256(b"".join(zf.read(n) for n in pickles)).hexdigest()
    return tensors, ShardInfo(path, path.stat().st_size, digest)


def read_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Index a PyTorch zip checkpoint file: names, dtypes, shapes; no tensor data."""
    return _torch_header(path)


def read_tensor(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    """One tensor as stored, owned by the caller; with ``part`` only that expert's matrix."""
    state = _torch_load(info.shard)
    value = state.get(info.stored_name)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(
            f"{info.shard}: no tensor {info.stored_name!r}; the file changed since it was indexed, rescan"
        )
    view = value if part is None else value[part.key]
    tensor = view.clone(memory_format=torch.contiguous_format)  # copies only these pages out of the mapping
    del state, value, view
    return tensor
