"""Plain FP8 casts (F8_E4M3/F8_E5M2 weights without scale tensors) are scored like any float weight."""

import pytest
import torch

from streamscan.pipeline import scan
from tests.conftest import planted, write_tensors


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_plain_fp8_cast_is_scored_as_its_upcast(tmp_path, dtype):
    w = planted(64, 48, [8.0, 4.0, 2.0, 1.0] + [0.05] * 20, seed=1).to(dtype)
    path = write_tensors(tmp_path / "m" / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": w})
    res = scan(path.parent, tmp_path / "o", devices="cpu", cpu_workers=1)
    (r,) = res.results
    assert r.status == "ok" and r.snr is not None, r
    up = write_tensors(tmp_path / "u" / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": w.float()})
    (ref,) = scan(up.parent, tmp_path / "o2", devices="cpu", cpu_workers=1).results
    assert r.snr == ref.snr
