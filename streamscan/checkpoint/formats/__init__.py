"""formats: one reader per checkpoint file format, chosen here by the file's suffix and nowhere else.

Each format module has the same two functions:

- ``read_header(path) -> (tensors, shard)``: names, dtypes, shapes and byte ranges; no tensor data;
- ``read_tensor(info, part=None) -> torch.Tensor``: one tensor (or one expert's slice ``part``), owned by the
  caller, as stored (GGUF quants come dequantized to float32).

safetensors (``.safetensors``), GGUF (``.gguf``) and PyTorch zip (``.bin``/``.pt``/``.pth``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from streamscan.errors import CheckpointError

FORMATS = {".safetensors": "safetensors", ".gguf": "gguf", ".bin": "torch_zip", ".pt": "torch_zip", ".pth": "torch_zip"}


def format_for(path: Path) -> ModuleType:
    """The format module that reads PATH (imported on first use: GGUF needs the optional gguf package)."""
    name = FORMATS.get(os.path.splitext(os.fspath(path))[1])  # Path(path).suffix, without a Path per read
    if name is None:
        raise CheckpointError(f"{path}: unknown checkpoint format; give .safetensors, .gguf or .bin files")
    return importlib.import_module(f"{__name__}.{name}")
