"""Quantized Mixture-of-Experts tensors, one expert slice at a time: gpt-oss MXFP4 experts (interleaved
gate/up) and GGUF stacked experts (`ffn_*_exps`)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import streamscan
from streamscan.checkpoint.reader import read_tensor
from streamscan.compute.spectrum import score
from streamscan.pipeline import inspect_model
from tests.fixtures.synthetic_moe import MoeShape, write_moe
from tests.fixtures.synthetic_quant import (
    mxfp4_quantize,
    mxfp4_reference,
    write_mxfp4_gpt_oss,
)

SHAPE = MoeShape(hidden=64, ffn=96)  # 2I = 192 != H: the gate_up axis is unambiguous


def test_gpt_oss_mxfp4_experts_are_dequantized_one_slice_at_a_time(tmp_path):
    model, expected = write_mxfp4_gpt_oss(tmp_path / "oss", SHAPE)
    _, plan = inspect_model(model)
    slices = {j.name: j for j in plan.jobs if j.part is not None}
    assert set(slices) == set(expected) and len(slices) == 2 * 4 * 3
    # same job names as the bf16 release of the same model, whose experts are stored transposed ([E, H, 2I])
    _, bf16 = inspect_model(write_moe(tmp_path / "oss-bf16", "gpt_oss", SHAPE))
    assert {j.name: j.shape[::-1] for j in bf16.jobs if j.part is not None} == {n: j.shape for n, j in slices.items()}
    for name, job in slices.items():
        assert job.tensor.dtype == "MXFP4" and job.tensor.key.endswith("_blocks")
        assert torch.equal(read_tensor(job.tensor, job.part), expected[name]), name
    assert {s.name for s in plan.consumed} == {
        f"model.layers.{l}.mlp.experts.{p}_scales" for l in (0, 1) for p in ("gate_up_proj", "down_proj")
    }
    res = streamscan.scan(model, tmp_path / "out", devices="cpu", cpu_workers=1)
    for name, want in expected.items():
        assert res.snr[name] == pytest.approx(score(want.double()).snr, rel=1e-9), name
    assert (tmp_path / "out" / "moe_experts.csv").exists()
    assert len(res.summary["consumed_tensors"]) == 4


def test_mxfp4_quantizer_round_trips_the_grid():
    w = torch.tensor([[0.0, 0.5, -1.5, 6.0] * 8, [3.0, -4.0, 2.0, 1.0] * 8]) * 4
    blocks, scales = mxfp4_quantize(w)
    assert scales.tolist() == [[129], [129]] and torch.equal(mxfp4_reference(blocks, scales), w)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the high-water RSS")
def test_one_mxfp4_expert_slice_reads_only_that_expert(tmp_path):
    """Expert 11's gate of a 32-expert MXFP4 gate_up tensor (64 MiB of blocks, 512 MiB as float32)."""
    path = tmp_path / "m" / "model.safetensors"
    path.parent.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "model.layers.0.mlp.experts.gate_up_proj_blocks": torch.randint(
                0, 256, (32, 4096, 32, 16), dtype=torch.uint8, generator=g
            ),
            "model.layers.0.mlp.experts.gate_up_proj_scales": torch.randint(
                120, 130, (32, 4096, 32), dtype=torch.uint8, generator=g
            ),
        },
        str(path),
    )
    (path.parent / "config.json").write_text(
        '{"model_type": "gpt_oss", "hidden_size": 1024, "intermediate_size": 2048, "num_local_experts": 32}'
    )
    code = f"""
import torch
from streamscan.pipeline import inspect_model
from streamscan.checkpoint.reader import read_tensor
_, plan = inspect_model({str(path.parent)!r})
job = next(j for j in plan.jobs if j.name == "model.layers.0.mlp.experts.gate_up_proj[11].gate")
torch.ones(2048, 1024).sum()
def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
base = peak_kib()
x = read_tensor(job.tensor, job.part)
assert tuple(x.shape) == (2048, 1024) and x.dtype == torch.float32
print((peak_kib() - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 24, out.stdout  # the slice is 8 MiB as float32


def test_gguf_stacked_experts_split_per_expert(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    E, I, H = 4, 64, 96
    path = tmp_path / "moe.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2moe")
    w.add_block_count(1)
    w.add_embedding_length(H)
    w.add_expert_count(E)
    w.add_expert_feed_forward_length(I)
    g = torch.Generator().manual_seed(0)
    q8 = gguf.GGMLQuantizationType.Q8_0
    stacks = {"ffn_gate_exps": (E, I, H), "ffn_up_exps": (E, I, H), "ffn_down_exps": (E, H, I)}
    expected = {}
    for name, shape in stacks.items():
        q = quants.quantize(torch.randn(*shape, generator=g).numpy(), q8)
        w.add_tensor(f"blk.0.{name}.weight", q, raw_dtype=q8)
        expected[name] = torch.from_numpy(quants.dequantize(q, q8).copy())
    w.add_tensor("blk.0.ffn_gate_inp.weight", torch.randn(E, H, generator=g).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    _, plan = inspect_model(path)
    jobs = {j.name: j for j in plan.jobs}
    assert set(jobs) == {"model.layers.0.mlp.gate"} | {
        f"model.layers.0.mlp.experts.{p}[{e}]" for e in range(E) for p in ("gate_proj", "up_proj", "down_proj")
    }
    for e in range(E):
        for gg, hf in (("ffn_gate_exps", "gate_proj"), ("ffn_down_exps", "down_proj")):
            job = jobs[f"model.layers.0.mlp.experts.{hf}[{e}]"]
            assert torch.equal(read_tensor(job.tensor, job.part), expected[gg][e])
