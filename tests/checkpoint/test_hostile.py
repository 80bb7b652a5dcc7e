"""Hostile checkpoints: index entries that escape the checkpoint, control characters in names, odd files."""

import json
import os
import shutil

import pytest
import torch

from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.errors import CheckpointError, SourceError
from tests.conftest import write_tensors
from tests.fixtures.synthetic_quant import write_bin_llama

INDEXES = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}


@pytest.fixture(params=sorted(INDEXES))
def indexed(request, sharded_llama, tmp_path):
    if request.param == "safetensors":
        return sharded_llama, INDEXES["safetensors"]
    from tests.fixtures.synthetic import LlamaShape

    return write_bin_llama(tmp_path / "bin-llama", LlamaShape(layers=2), shards=2), INDEXES["bin"]


def _redirect(root, index_name, make_target):
    index = root / index_name
    data = json.loads(index.read_text())
    name = sorted(data["weight_map"])[0]
    shard = root / data["weight_map"][name]
    data["weight_map"][name] = make_target(shard)
    index.write_text(json.dumps(data))
    return name


@pytest.mark.parametrize("how", ["dotdot", "absolute", "subdir"])
def test_weight_map_entries_outside_the_checkpoint_are_refused(indexed, tmp_path, how):
    root, index_name = indexed
    outside = tmp_path / "outside"
    outside.mkdir()

    def target(shard):
        copy = outside / shard.name
        shutil.copy(shard, copy)
        if how == "dotdot":
            return f"../outside/{shard.name}"
        if how == "absolute":
            return str(copy)
        (root / "sub").mkdir()
        shutil.copy(shard, root / "sub" / shard.name)
        return f"sub/{shard.name}"

    name = _redirect(root, index_name, target)
    with pytest.raises(SourceError) as err:
        build_index(resolve(root))
    msg = str(err.value)
    assert "\n" not in msg and index_name in msg and name in msg and "not a file name in the checkpoint" in msg


@pytest.mark.parametrize("value", [[], None, "x"])
def test_weight_map_that_is_not_an_object_is_one_line(indexed, value):
    root, index_name = indexed
    index = root / index_name
    index.write_text(json.dumps({"weight_map": value}))
    with pytest.raises(SourceError, match="weight_map is .*, not an object"):
        resolve(root)


def test_hf_cache_style_symlinked_shards_still_work(sharded_llama, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for f in sharded_llama.iterdir():
        blob = blobs / f"sha-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    expected = build_index(resolve(sharded_llama))
    got = build_index(resolve(snapshot))
    assert [(t.name, t.start, t.end) for t in got.tensors] == [(t.name, t.start, t.end) for t in expected.tensors]


def test_fifo_shard_is_refused_not_hung(tmp_path):
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        build_index(resolve(tmp_path / "m"))


def test_symlink_loop_shard_is_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    os.symlink("model.safetensors", tmp_path / "m" / "model.safetensors")
    with pytest.raises((CheckpointError, SourceError)) as err:
        build_index(resolve(tmp_path / "m" / "model.safetensors"))
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)


EVIL = "x\n- .*\nlearning_rate: 100.0\n#"


def test_control_characters_in_safetensors_names_are_refused(tmp_path):
    path = write_tensors(tmp_path / "m" / "model.safetensors", {EVIL + ".weight": torch.randn(4, 4)})
    with pytest.raises(CheckpointError) as err:
        build_index(resolve(path.parent))
    assert "\n" not in str(err.value) and "control" in str(err.value) and str(path) in str(err.value)


def test_control_characters_in_torch_names_are_refused(tmp_path):
    (tmp_path / "b").mkdir()
    torch.save({EVIL + ".weight": torch.randn(4, 4)}, tmp_path / "b" / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        build_index(resolve(tmp_path / "b"))
    assert "\n" not in str(err.value) and "U+000A" in str(err.value) and "learning_rate" in str(err.value)


def test_control_characters_in_gguf_names_are_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "evil.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("blk.0.ffn_down.weight\u202e", torch.randn(8, 8).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError) as err:
        build_index(resolve(path))
    assert "\n" not in str(err.value) and "U+202E" in str(err.value)


def test_stride_0_view_in_a_bin_is_refused_not_expanded(tmp_path):
    (tmp_path / "b").mkdir()
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.ones(1).expand(1_500_000, 1000)}, tmp_path / "b" / "x.bin")
    with pytest.raises(CheckpointError, match="expanded to 6000000000"):
        build_index(resolve(tmp_path / "b" / "x.bin"))


def test_bin_record_cut_short_is_one_line_never_a_score(tmp_path):
    import zipfile

    src = tmp_path / "src.bin"
    torch.save({"a.weight": torch.randn(64, 64), "b.weight": torch.randn(64, 64)}, src)
    (tmp_path / "b").mkdir()
    bad = tmp_path / "b" / "pytorch_model.bin"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, data[:1000] if info.filename.endswith("/data/0") else data)
    with pytest.raises(CheckpointError, match="cut short"):
        build_index(resolve(tmp_path / "b"))


def test_huge_weight_block_size_is_bounded_by_the_weight(tmp_path):
    from streamscan.pipeline import scan

    w = torch.randn(256, 64)
    tensors = {
        "model.layers.0.mlp.down_proj.weight": w.to(torch.float8_e4m3fn),
        "model.layers.0.mlp.down_proj.weight_scale_inv": torch.ones(1, 1),
    }
    results = []
    for block in ([256, 1_500_000_000], [256, 64]):
        cfg = {"quantization_config": {"quant_method": "fp8", "weight_block_size": block}}
        path = write_tensors(tmp_path / f"m{block[1]}" / "model.safetensors", tensors, cfg)
        (r,) = scan(path.parent, tmp_path / f"o{block[1]}", devices="cpu", cpu_workers=1).results
        results.append(r)
    assert results[0].status == "ok" and results[0].snr == results[1].snr


def test_gguf_metadata_arrays_are_not_materialised(tmp_path):
    import tracemalloc

    gguf = pytest.importorskip("gguf")
    from streamscan.checkpoint.formats.gguf import gguf_config
    from streamscan.checkpoint.formats.gguf_header import read_gguf_header

    path = tmp_path / "tokens.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list([""] * 300_000)
    w.add_tensor("blk.0.ffn_down.weight", torch.randn(16, 16).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    tracemalloc.start()
    fields, tensors, _ = read_gguf_header(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(fields["tokenizer.ggml.tokens"]) == 300_000 and [t.name for t in tensors] == ["blk.0.ffn_down.weight"]
    assert peak < 1 << 20, peak  # GGUFReader: hundreds of MB for the same file
    assert gguf_config(path)["vocab_size"] == 300_000


def test_truncated_gguf_metadata_is_one_line(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "cut.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(["a"] * 1000)
    w.add_tensor("blk.0.ffn_down.weight", torch.randn(16, 16).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(CheckpointError, match="past the end of the file"):
        build_index(resolve(path))


def test_truncated_zip_is_not_called_legacy(tmp_path):
    (tmp_path / "b").mkdir()
    path = tmp_path / "b" / "pytorch_model.bin"
    torch.save({"a.weight": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated or corrupt zip") as err:
        build_index(resolve(tmp_path / "b"))
    assert "legacy" not in str(err.value)


def test_fp8_scales_that_do_not_tile_are_named_as_the_cause(tmp_path):
    from streamscan.errors import UsageError
    from streamscan.pipeline import scan

    tensors = {
        "model.layers.0.mlp.down_proj.weight": torch.randn(256, 256).to(torch.float8_e4m3fn),
        "model.layers.0.mlp.down_proj.weight_scale_inv": torch.ones(3, 5),
    }
    path = write_tensors(tmp_path / "m" / "model.safetensors", tensors)
    with pytest.raises(UsageError) as err:
        scan(path.parent, tmp_path / "o", devices="cpu")
    assert "does not tile" in str(err.value) and "--include" not in str(err.value)
