"""Quantized safetensors checkpoints: FP8 weight + scale pairs as one job, MXFP4 pairs, NVFP4 skipped,
scale tensors consumed; scores equal a scan of the independently dequantized float32 matrices."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import streamscan
from streamscan.checkpoint.reader import read_tensor
from streamscan.cli import main
from streamscan.pipeline import inspect_model
from tests.conftest import write_tensors
from tests.fixtures.synthetic import LlamaShape
from tests.fixtures.synthetic_quant import write_fp8_llama

SHAPE = LlamaShape(layers=2, hidden=64, ffn=176, kv=16, vocab=256)


def scan_snr(model, out):
    return streamscan.scan(model, out, devices="cpu", cpu_workers=1).snr


def float_twin(tmp_path, name, expected: dict, config: dict) -> Path:
    """The same matrices, already float32, as a plain safetensors checkpoint."""
    return write_tensors(
        tmp_path / name / "model.safetensors", {f"{k}.weight": v for k, v in expected.items()}, config
    ).parent


def assert_same_snr(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9), k


@pytest.mark.parametrize("block,fp8", [((32, 48), torch.float8_e4m3fn), ((128, 128), torch.float8_e5m2)])
def test_fp8_block_scaled_scores_the_dequantized_matrix(tmp_path, block, fp8):
    model, expected = write_fp8_llama(tmp_path / "fp8", SHAPE, block=block, dtype=fp8)
    config = json.loads((model / "config.json").read_text())
    index, plan = inspect_model(model)
    quantized = [j for j in plan.jobs if j.tensor.quant is not None]
    assert len(quantized) == 14 and all(j.tensor.quant.scheme == "fp8-block" for j in quantized)
    assert all(j.tensor.quant.block == block and j.shape == tuple(expected[j.name].shape) for j in quantized)
    # scale tensors are consumed with their weights, never skipped as noise or scored
    assert sorted(s.name for s in plan.consumed) == sorted(f"{j.name}.weight_scale_inv" for j in quantized)
    assert all(s.reason == f"scale of {s.name[: -len('.weight_scale_inv')]} (FP8)" for s in plan.consumed)
    assert not any("scale" in s.name for s in plan.skipped)
    for j in quantized[:3]:
        assert torch.equal(read_tensor(j.tensor), expected[j.name])
    snr = scan_snr(model, tmp_path / "out")
    assert_same_snr(snr, scan_snr(float_twin(tmp_path, "twin", expected, config), tmp_path / "out2"))
    summary = json.loads((tmp_path / "out" / "streamscan_summary.json").read_text())
    assert len(summary["consumed_tensors"]) == 14 and not any("scale" in k for k in summary["skipped_tensors"])
    results = json.loads((tmp_path / "out" / "snr_results_fp8.json").read_text())
    assert not any("scale" in k for k in results)


def test_fp8_per_tensor_scale_and_input_scale(tmp_path):
    model, expected = write_fp8_llama(tmp_path / "fp8t", SHAPE, block=None)
    config = json.loads((model / "config.json").read_text())
    _, plan = inspect_model(model)
    schemes = {j.tensor.quant.scheme for j in plan.jobs if j.tensor.quant is not None}
    assert schemes == {"fp8-scaled"} and len(plan.consumed) == 28
    assert {s.reason.split(" of ")[0] for s in plan.consumed} == {"scale", "activation/extra scale"}
    assert_same_snr(
        scan_snr(model, tmp_path / "o1"), scan_snr(float_twin(tmp_path, "t", expected, config), tmp_path / "o2")
    )


def test_fp8_scales_that_do_not_tile_the_weight_are_skipped_with_the_fix(tmp_path):
    model, _ = write_fp8_llama(tmp_path / "fp8", SHAPE, block=(32, 48))
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [64, 64]  # the scales were made for 32x48
    (model / "config.json").write_text(json.dumps(config))
    _, plan = inspect_model(model)
    reasons = {s.name: s.reason for s in plan.skipped}
    assert "weight_block_size" in reasons["model.layers.0.mlp.down_proj"]
    assert all(j.tensor.quant is None for j in plan.jobs)  # only the bf16 embeddings and head remain


def test_nvfp4_is_skipped_with_a_reason_and_mxfp4_matrix_is_scored(tmp_path):
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (48, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(120, 130, (48, 4), dtype=torch.uint8, generator=g)
    path = write_tensors(
        tmp_path / "mixed" / "model.safetensors",
        {
            "model.layers.0.mlp.up_proj.weight": torch.randint(0, 256, (48, 64), dtype=torch.uint8),
            "model.layers.0.mlp.up_proj.weight_scale": torch.ones(48, 8).to(torch.float8_e4m3fn),
            "model.layers.0.mlp.up_proj.weight_scale_2": torch.ones(1),
            "model.layers.0.mlp.down_proj.weight_blocks": blocks,
            "model.layers.0.mlp.down_proj.weight_scales": scales,
        },
        {"model_type": "llama"},
    )
    _, plan = inspect_model(path)
    skipped = {s.name: s.reason for s in plan.skipped}
    assert skipped["model.layers.0.mlp.up_proj"].startswith("NVFP4") and "bf16" in skipped["model.layers.0.mlp.up_proj"]
    assert {s.name for s in plan.consumed} == {
        "model.layers.0.mlp.up_proj.weight_scale",
        "model.layers.0.mlp.up_proj.weight_scale_2",
        "model.layers.0.mlp.down_proj.weight_scales",
    }
    (job,) = plan.jobs
    assert job.name == "model.layers.0.mlp.down_proj" and job.shape == (48, 128) and job.tensor.dtype == "MXFP4"
    # the reader returns the independent E2M1 x 2^(s-127) decoding, low nibble first
    fp4 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
    codes = torch.stack([blocks & 15, blocks >> 4], dim=-1).reshape(48, 4, 32).long()
    ref = (fp4[codes] * 2.0 ** (scales.double() - 127).unsqueeze(-1)).reshape(48, 128).float()
    assert torch.equal(read_tensor(job.tensor), ref)
    res = streamscan.scan(path.parent, tmp_path / "out", devices="cpu", cpu_workers=1)
    twin = write_tensors(tmp_path / "twin" / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": ref}).parent
    assert res.snr["model.layers.0.mlp.down_proj"] == pytest.approx(
        scan_snr(twin, tmp_path / "o2")["model.layers.0.mlp.down_proj"], rel=1e-9
    )


def test_cli_inspect_lists_scales_and_run_counts_them(tmp_path):
    model, _ = write_fp8_llama(tmp_path / "fp8", SHAPE, block=(32, 48))
    res = CliRunner().invoke(main, ["inspect", str(model)])
    assert res.exit_code == 0 and "scale  model.layers.0.mlp.down_proj.weight_scale_inv" not in res.output
    scale_lines = [line.split() for line in res.output.splitlines() if line.startswith("scale")]
    assert ["scale", "mlp.down_proj.weight_scale_inv", "2", "scale"] in [line[:4] for line in scale_lines]
    assert sum(int(line[2]) for line in scale_lines) == 14  # folded per type, with counts
    listed = json.loads(CliRunner().invoke(main, ["inspect", str(model), "--json"]).output)
    assert len(listed["scale_tensors"]) == 14 and sum(listed["scales"].values()) == 14
    assert "model.layers.0.mlp.down_proj.weight_scale_inv" in listed["scale_tensors"]  # --json lists each
    assert "16 matrices to score, 5 tensors skipped, 14 scale tensors read with their weights" in res.output
    run = CliRunner().invoke(main, ["run", str(model), "--out", str(tmp_path / "o"), "--devices", "cpu"])
    assert run.exit_code == 0 and "14 scale tensors read with their weights" in run.output, run.output


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the high-water RSS")
def test_dequantizing_one_fp8_matrix_holds_only_that_matrix(tmp_path):
    """Peak RSS of reading one 1024x2048 FP8 matrix (8 MiB as float32) from a 64 MiB FP8 checkpoint."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(32):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(1024, 2048, generator=gen).to(torch.float8_e4m3fn)
        tensors[f"model.layers.{i}.mlp.up_proj.weight_scale_inv"] = torch.rand(8, 16, generator=gen)
    path = write_tensors(tmp_path / "big" / "model.safetensors", tensors, {"model_type": "deepseek_v3"})
    del tensors
    code = f"""
import torch
from streamscan.pipeline import inspect_model
from streamscan.checkpoint.reader import read_tensor
_, plan = inspect_model({str(path.parent)!r})
torch.ones(1024, 2048).sum()
def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
base = peak_kib()
for job in plan.jobs[:4]:
    x = read_tensor(job.tensor)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1024, 2048)
    del x
print((peak_kib() - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    # one matrix: 2 MiB FP8 + 8 MiB float32 result (+ a transient chunk); the file is 64 MiB
    assert float(out.stdout.strip()) < 24, out.stdout


def test_dequantized_weights_are_budgeted_as_float32(tmp_path):
    model, _ = write_fp8_llama(tmp_path / "fp8", SHAPE, block=(32, 48))
    _, plan = inspect_model(model)
    fp8 = next(j for j in plan.jobs if j.tensor.quant is not None)
    bf16 = next(j for j in plan.jobs if j.tensor.quant is None)
    assert fp8.tensor.dtype == "F8_E4M3" and fp8.tensor.dequantized and fp8.tensor.element_size == 4
    assert bf16.tensor.element_size == 2 and not bf16.tensor.dequantized
    assert read_tensor(fp8.tensor).element_size() == fp8.tensor.element_size
