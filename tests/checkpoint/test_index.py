import json
import struct

import pytest
import torch

from streamscan.checkpoint.formats.safetensors import read_header
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve, slugify
from streamscan.errors import CheckpointError, SourceError
from tests.conftest import write_tensors


def test_sharded_index_lists_every_tensor_with_byte_ranges(sharded_llama):
    idx = build_index(resolve(sharded_llama))
    assert len(idx.shards) == 2 and idx.source.index_file is not None
    names = {t.name for t in idx.tensors}
    assert "model.layers.3.mlp.down_proj.weight" in names and "lm_head.weight" in names
    t = next(t for t in idx.tensors if t.name == "model.layers.0.mlp.down_proj.weight")
    assert t.dtype == "BF16" and t.shape == (64, 176) and t.nbytes == 64 * 176 * 2
    with open(t.shard, "rb") as fh:  # the byte range really holds the tensor
        fh.seek(t.start)
        raw = bytearray(fh.read(t.nbytes))
    from safetensors import safe_open

    with safe_open(str(t.shard), "pt") as f:
        assert torch.equal(torch.frombuffer(raw, dtype=torch.bfloat16).view(64, 176), f.get_tensor(t.name))


def test_resolve_single_dir_single_file_and_slug(single_llama):
    assert resolve(single_llama).files == (single_llama / "model.safetensors",)
    one = resolve(single_llama / "model.safetensors")
    assert one.model_id == "single_llama" and one.slug == "single-llama"
    assert resolve(single_llama).config["vocab_size"] == 256
    assert slugify("org/My_Model") == "org-My-Model"


def test_missing_path_and_non_checkpoint_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no model.safetensors.index.json"):
        resolve(tmp_path / "empty")
    (tmp_path / "x.txt").write_bytes(b"x")
    with pytest.raises(SourceError, match="not a .safetensors, .gguf or .bin file"):
        resolve(tmp_path / "x.txt")
    (tmp_path / "x.bin").write_bytes(b"x")  # a PyTorch file name, but not a zip checkpoint
    with pytest.raises(CheckpointError, match="legacy \\(non-zip\\) PyTorch file"):
        build_index(resolve(tmp_path / "x.bin"))


def test_missing_shard_named_in_error(sharded_llama):
    (sharded_llama / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match="model-00002-of-00002.safetensors.*missing"):
        resolve(sharded_llama)


def test_index_and_shard_disagreement(sharded_llama):
    index = sharded_llama / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="model.layers.9.mlp.up_proj.weight"):
        build_index(resolve(sharded_llama))


@pytest.mark.parametrize("damage", ["garbage_length", "bad_json", "truncated"])
def test_corrupt_headers_are_reported_with_the_file(tmp_path, damage):
    path = write_tensors(tmp_path / "m" / "model.safetensors", {"a.weight": torch.randn(8, 8)})
    data = bytearray(path.read_bytes())
    if damage == "garbage_length":
        data[:8] = struct.pack("<Q", 10**12)
    elif damage == "bad_json":
        data[8:12] = b"\xff\xfe{["
    else:
        data = data[: len(data) - 10]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        read_header(path)


def test_the_weight_map_is_read_once_per_scan(sharded_llama, monkeypatch):
    # resolve finds the shards from the index and keeps its weight map; build_index checks the headers
    # against that one instead of parsing the (70k-entry) index again
    from streamscan.checkpoint import config
    from streamscan.checkpoint import index as index_mod
    from streamscan.checkpoint import source as source_mod

    reads = []
    real = config.read_weight_map

    def counted(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(source_mod, "read_weight_map", counted)
    monkeypatch.setattr(index_mod, "read_weight_map", counted)
    src = resolve(sharded_llama)
    assert src.weight_map == real(src.index_file)
    build_index(src)
    assert reads == [src.index_file]
