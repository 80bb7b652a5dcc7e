"""memory: the parameters of a model in memory, indexed as a checkpoint (for ``score_model`` and rescans).

The tensors stay where they are (CPU or GPU); their TensorInfo records name, dtype and shape, and the shard
``IN_MEMORY`` says that no file holds them: the executor gets each matrix from the caller, never the reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from streamscan.checkpoint.formats.torch_zip import TORCH_DTYPES
from streamscan.checkpoint.index import CheckpointIndex
from streamscan.checkpoint.source import ModelSource
from streamscan.records import TensorInfo

IN_MEMORY = Path("<memory>")


def memory_index(tensors: Mapping[str, torch.Tensor], config: dict, model_id: str) -> CheckpointIndex:
    """An index of TENSORS (name -> tensor) with CONFIG standing in for config.json."""
    source = ModelSource(model_id, Path("."), (), None, config)
    infos = tuple(
        TensorInfo(
            n,
            IN_MEMORY,
            TORCH_DTYPES.get(p.dtype, str(p.dtype).removeprefix("torch.")),
            tuple(p.shape),
            0,
            p.numel() * p.element_size(),
        )
        for n, p in tensors.items()
    )
    return CheckpointIndex(source, infos, ())
