import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures.synthetic import LlamaShape, write_llama


def write_tensors(path: Path, tensors: dict, config: dict | None = None) -> Path:
    """A single-file checkpoint with exactly these tensors (and config.json beside it if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    if config is not None:
        (path.parent / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def sharded_llama(tmp_path) -> Path:
    """A 4-layer bf16 Llama in two shards with an index."""
    return write_llama(tmp_path / "tiny-llama", LlamaShape(layers=4), layers_per_shard=2)


@pytest.fixture
def single_llama(tmp_path) -> Path:
    return write_llama(tmp_path / "single_llama", LlamaShape(layers=2, tied=True))


def planted(m: int, n: int, s: list[float], seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """U diag(s) Vᵀ with exactly the singular values s (len(s) <= min(m, n), rest zero)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64)).Q
    return ((u * torch.tensor(s, dtype=torch.float64)) @ v.T).to(dtype)
