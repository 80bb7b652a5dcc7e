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
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise CheckpointError(f"{path}: a truncated or corrupt zip (PyTorch) file; re-download it")
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


def _check_storage(path: Path, name: str, value: torch.Tensor) -> None:
    """A tensor may only be read if the file holds its bytes: its view must lie inside its storage, and
    the storage must not be smaller than the tensor (a stride-0 ``expand`` view of 26 KB would otherwise be
    copied out as gigabytes)."""
    nbytes = value.numel() * value.element_size()
    if value.numel() == 0:
        return
    storage = value.untyped_storage().nbytes()
    last = value.storage_offset() + sum((s - 1) * st for s, st in zip(value.shape, value.stride()) if s > 0)
    if min(value.stride(), default=1) < 0 or (last + 1) * value.element_size() > storage:
        raise CheckpointError(
            f"{path}: tensor {name!r} lies outside its storage record ({storage} bytes); "
            "the file is corrupt, re-download or re-save it"
        )
    if nbytes > storage:
        raise CheckpointError(
            f"{path}: tensor {name!r} is a view of {storage} bytes expanded to {nbytes} (stride 0 or overlapping); "
            "re-save it with .contiguous() or convert the checkpoint to safetensors"
        )


def _check_records(path: Path, zf: zipfile.ZipFile, storages: list[int]) -> None:
    """Every storage must have a data record of at least its size: a record cut short would be read into
    the records after it. (Storages are matched to records by size, largest first.)"""
    records = sorted(
        (i.file_size for i in zf.infolist() if "/data/" in i.filename and not i.filename.endswith("/")), reverse=True
    )
    for k, need in enumerate(sorted(storages, reverse=True)):
        if k >= len(records) or records[k] < need:
            have = records[k] if k < len(records) else 0
            raise CheckpointError(
                f"{path}: a tensor storage of {need} bytes has a data record of {have} bytes (cut short); "
                "the file is corrupt, re-download or re-save it"
            )


def _torch_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    state = _torch_load(path)
    tensors = []
    storages: dict[int, int] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        _check_storage(path, str(name), value)
        storage = value.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        dtype = TORCH_DTYPES.get(value.dtype, str(value.dtype).removeprefix("torch."))
        nbytes = value.numel() * value.element_size()
        # torch.load locates the data itself; the byte range records only the tensor's size
        tensors.append(TensorInfo(str(name), path, dtype, tuple(value.shape), 0, nbytes))
    del state
    with zipfile.ZipFile(path) as zf:
        _check_records(path, zf, [n for n in storages.values() if n])
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
