"""GPU: per-shape time of gram64 (on the solver path chosen for the device, batched for expert shapes) against
float32 svdvals on the same device (the reference's GPU way), SNR error against float64 SVD, and whole-scan
projections for Llama-3-70B, Mixtral-8x22B, DBRX, Qwen1.5-110B and DeepSeek-V3 on 1 and 8 GPUs.

Run on a machine with CUDA: python -m bench.gpu     (bench/results/gpu.json + the "gpu" section of RESULTS.md)
Check the script on CPU with small shapes: python -m bench.gpu --device cpu --scale 16 --no-write
(--no-write, and any --device cpu run without --json, writes the JSON to a temporary file, never to
bench/results/gpu.json: that file holds GPU numbers only.)

Projection of one model on G GPUs: max(Σ over its matrices of the measured seconds of its shape / G,
checkpoint bytes / --feed-gbps), the host feed being shared by the GPUs of one host. Expert shapes use
the per-matrix time of a batch of --batch. Times are medians of --repeat runs after one warm-up.
A model is projected only when every one of its shapes was measured (--shapes, --deadline can cut the list).

On CUDA each issue shape also gets a row with MAGMA's eigensolver (torch.backends.cuda.preferred_linalg_library,
set here for the row and set back: a benchmark may change the process; the scan's setting is the CLI's
STREAMSCAN_CUDA_LINALG), and each shape up to CPU_MAX_ELEMENTS the relative difference of the GPU's gram64 SNR
from the CPU's (``cpu_rel_diff``). The JSON is rewritten after every shape, so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from bench.common import update_section
from streamscan.compute import solver
from streamscan.compute.spectrum import score, score_batch

RESULTS_JSON = Path(__file__).with_name("results") / "gpu.json"
ISSUE_SHAPES = [(4096, 4096), (4096, 14336), (8192, 8192), (8192, 28672), (6144, 16384), (7168, 2048)]
REF_MAX_ELEMENTS = {"cpu": 1 << 62, "cuda": 8192 * 8192}  # float64 SVD reference only up to this size on a GPU
CPU_MAX_ELEMENTS = 4096 * 14336  # the GPU's SNR compared with the CPU's up to this size (CPU time: seconds)


def _dense(c: Counter, layers: int, hidden: int, ffn: int, kv: int) -> None:
    for s in [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (ffn, hidden), (ffn, hidden)]:
        c[s] += layers
    c[(hidden, ffn)] += layers


def models() -> dict[str, dict]:
    """Each model: matrix shape -> count, expert shapes (batched), bytes per element of its stored weights."""
    llama = Counter()
    _dense(llama, 80, 8192, 28672, 1024)
    llama[(128256, 8192)] += 2
    qwen = Counter()
    _dense(qwen, 80, 8192, 49152, 1024)
    qwen[(152064, 8192)] += 2
    mixtral = Counter()
    for s in [(6144, 6144), (1024, 6144), (1024, 6144), (6144, 6144), (8, 6144)]:
        mixtral[s] += 56
    for s in [(16384, 6144), (16384, 6144), (6144, 16384)]:
        mixtral[s] += 56 * 8
    mixtral[(32768, 6144)] += 2
    dbrx = Counter()  # fused Wqkv 6144+2x1024, 16 experts of ffn 10752 (w1, v1, w2 all 10752x6144)
    for s in [(8192, 6144), (6144, 6144), (16, 6144)]:
        dbrx[s] += 40
    dbrx[(10752, 6144)] += 40 * 16 * 3
    dbrx[(100352, 6144)] += 2
    ds = Counter()  # 61 layers (3 dense, 58 MoE of 256 routed + 1 shared expert), MLA attention, FP8
    for s in [(1536, 7168), (24576, 1536), (576, 7168), (32768, 512), (7168, 16384)]:
        ds[s] += 61
    ds[(18432, 7168)] += 3 * 2
    ds[(7168, 18432)] += 3
    ds[(256, 7168)] += 58
    ds[(2048, 7168)] += 58 * 257 * 2
    ds[(7168, 2048)] += 58 * 257
    ds[(129280, 7168)] += 2
    return {
        "Llama-3-70B": {"counts": llama, "experts": set(), "bytes": 2},
        "Mixtral-8x22B": {"counts": mixtral, "experts": {(16384, 6144), (6144, 16384)}, "bytes": 2},
        "DBRX": {"counts": dbrx, "experts": {(10752, 6144)}, "bytes": 2},
        "Qwen1.5-110B": {"counts": qwen, "experts": set(), "bytes": 2},
        "DeepSeek-V3": {"counts": ds, "experts": {(2048, 7168), (7168, 2048)}, "bytes": 1},
    }


def timed(fn, device: str, repeat: int) -> float:
    fn()  # warm-up (cuSOLVER/cuBLAS handles, allocator)
    times = []
    for _ in range(repeat):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def planted(shape, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    W = torch.randn(shape, generator=g) / shape[1] ** 0.5
    W[: min(shape) // 8] *= 4  # some strong directions, as trained weights have
    u, v = torch.randn(shape[0], 1, generator=g), torch.randn(1, shape[1], generator=g)
    W += 100 * (u / u.norm()) @ (v / v.norm())  # and an outlier direction (where fp32 Grams fail)
    return W.to(torch.bfloat16)


def magma(fn):
    """FN() with MAGMA as torch's CUDA linear-algebra library (set back afterwards)."""
    before = torch.backends.cuda.preferred_linalg_library()
    torch.backends.cuda.preferred_linalg_library("magma")
    try:
        return fn()
    finally:
        torch.backends.cuda.preferred_linalg_library(before)


def measure(shape, device: str, repeat: int, batch: int, rates, kind: str, forced: str | None = None) -> list[dict]:
    """Rows {shape, method, seconds, snr_rel_err} for SHAPE (seconds per matrix)."""
    W = planted(shape, hash(shape) % 2**31)
    Wd = W.to(device)
    path = solver.choose(shape, 1, rates, kind, forced)
    exact = None
    if shape[0] * shape[1] <= REF_MAX_ELEMENTS[kind]:
        exact = score(Wd, "svdvals64", device).snr

    def err(snr):
        return None if exact is None or snr is None else abs(snr - exact) / abs(exact)

    rows = []
    for method, p in [("gram64", path), ("svdvals32", "gram64")]:
        sec = timed(lambda m=method, p=p: score(Wd, m, device, p), device, repeat if method == "gram64" else 1)
        name = f"gram64 ({p})" if method == "gram64" else method
        rows.append(
            {"shape": list(shape), "method": name, "seconds": sec, "snr_rel_err": err(score(Wd, method, device, p).snr)}
        )
    if kind == "cuda" and shape[0] * shape[1] <= CPU_MAX_ELEMENTS:
        cpu = score(W, "gram64").snr
        gpu = rows[0]["snr"] = score(Wd, "gram64", device, path).snr
        rows[0]["cpu_rel_diff"] = None if cpu is None or gpu is None else abs(gpu - cpu) / abs(cpu)
    if kind == "cuda" and tuple(shape) in ISSUE_SHAPES:
        sec = magma(lambda: timed(lambda: score(Wd, "gram64", device, path), device, repeat))
        snr = magma(lambda: score(Wd, "gram64", device, path).snr)
        rows.append(
            {"shape": list(shape), "method": f"gram64 ({path}, MAGMA)", "seconds": sec, "snr_rel_err": err(snr)}
        )
    Wd = None  # free the device copy before the batch
    if batch > 1:
        try:
            stack = torch.stack([planted(shape, s) for s in range(batch)]).to(device)
            sec = timed(lambda: score_batch(stack, "gram64", device, path), device, repeat) / batch
            snr = score_batch(stack[:1], "gram64", device, path)[0].snr
            exact0 = score(stack[0], "svdvals64", device).snr if exact is not None else None
            e = None if exact0 is None else abs(snr - exact0) / abs(exact0)
            rows.append(
                {"shape": list(shape), "method": f"gram64 batched x{batch} ({path})", "seconds": sec, "snr_rel_err": e}
            )
            del stack
        except torch.OutOfMemoryError:
            pass
    if kind == "cuda":
        torch.cuda.empty_cache()
    return rows


def project(specs: dict[str, dict], per_matrix: dict[tuple, float], scale: int, feed_gbps: float) -> list[dict]:
    out = []
    for model, spec in specs.items():
        compute = sum(n * per_matrix[s] for s, n in spec["counts"].items())
        nbytes = sum(n * s[0] * s[1] for s, n in spec["counts"].items()) * spec["bytes"] / scale**2
        feed = nbytes / (feed_gbps * 1e9)
        for gpus in (1, 8):
            out.append(
                {
                    "model": model,
                    "gpus": gpus,
                    "seconds": max(compute / gpus, feed),
                    "compute_seconds": compute / gpus,
                    "feed_seconds": feed,
                    "matrices": sum(spec["counts"].values()),
                    "gb": nbytes / 1e9,
                }
            )
    return out


def run(
    device: str,
    scale: int,
    repeat: int,
    batch: int,
    feed_gbps: float,
    shapes: list[tuple[int, int]] | None = None,
    deadline: float | None = None,
    forced: str | None = None,
    save=None,
) -> dict:
    """Measure SHAPES (default: the issue's and every model's), the first always, the others only until DEADLINE seconds
    have passed; SAVE(data) is called after every shape with what is measured so far."""
    kind = "cpu" if device == "cpu" else "cuda"
    start = time.perf_counter()
    rates = solver.probe(device)
    specs = models()
    if shapes is None:
        shapes = list(dict.fromkeys(ISSUE_SHAPES + [s for m in specs.values() for s in m["counts"]]))
    experts = set().union(*(m["experts"] for m in specs.values()))
    data = {
        "device": torch.cuda.get_device_name(torch.device(device)) if kind == "cuda" else "cpu",
        "scale": scale,
        "solver": {
            "fp64_tflops": rates.fp64_tflops,
            "fp32_tflops": rates.fp32_tflops,
            "path": solver.choose((8192, 8192), 1, rates, kind, forced),
        },
        "feed_gbps": feed_gbps,
        "per_shape": [],
        "projections": [],
        "not_measured": [],
    }
    per_matrix = {}
    for shape in shapes:
        if deadline is not None and per_matrix and time.perf_counter() - start > deadline:
            data["not_measured"].append(list(shape))
            continue
        small = (max(2, shape[0] // scale), max(2, shape[1] // scale))
        got = measure(small, device, repeat, batch if shape in experts else 1, rates, kind, forced)
        for r in got:
            r["full_shape"] = list(shape)
        data["per_shape"] += got
        batched = [r["seconds"] for r in got if "batched" in r["method"]]
        per_matrix[shape] = batched[0] if batched else got[0]["seconds"]
        print(
            f"{shape} -> {small}: "
            + ", ".join(f"{r['method']} {r['seconds']:.4f} s (err {r['snr_rel_err']})" for r in got),
            flush=True,
        )
        complete = {m: spec for m, spec in specs.items() if all(s in per_matrix for s in spec["counts"])}
        data["projections"] = project(complete, per_matrix, scale, feed_gbps)
        if save is not None:
            save(data)
    return data


def markdown(data: dict) -> str:
    rows = "\n".join(
        f"| {r['full_shape'][0]}×{r['full_shape'][1]} | {r['method']} | {r['seconds']:.4f} s | "
        f"{'n/a' if r['snr_rel_err'] is None else format(r['snr_rel_err'], '.1e')} |"
        for r in data["per_shape"]
        if tuple(r["full_shape"]) in ISSUE_SHAPES
    )
    agree = [r["cpu_rel_diff"] for r in data["per_shape"] if r.get("cpu_rel_diff") is not None]
    agreement = (
        f"GPU gram64 SNR against the CPU's on {len(agree)} shapes: at most {max(agree):.1e} relative.\n"
        if agree
        else ""
    )
    missing = f"Not measured (out of time): {data['not_measured']}.\n" if data.get("not_measured") else ""
    proj = "\n".join(
        f"| {p['model']} | {p['gpus']} | {p['gb']:.0f} GB | {p['compute_seconds'] / 60:.1f} min | "
        f"{p['feed_seconds'] / 60:.1f} min | **{p['seconds'] / 60:.1f} min** |"
        for p in data["projections"]
    )
    s = data["solver"]
    return f"""## GPU: per-shape times and whole-model projections (`python -m bench.gpu`)
Device: {data["device"]}{f" (dimensions divided by {data['scale']})" if data["scale"] > 1 else ""}; fp64 {s["fp64_tflops"]:.1f} TFLOP/s,
fp32 {s["fp32_tflops"]:.1f} TFLOP/s; solver path {s["path"]}. bf16 weights with strong rows and an outlier direction.
SNR error against float64 SVD on the same device (n/a: too large for the reference). All rows: bench/results/gpu.json.
{agreement}{missing}
| shape | method | seconds per matrix | SNR rel. error |
|---|---|---|---|
{rows}

Projection: max(Σ measured seconds / GPUs, bytes / {data["feed_gbps"]} GB/s host feed).

| model | GPUs | bytes | compute | feed | projected wall |
|---|---|---|---|---|---|
{proj}"""


def parse_shapes(text: str | None) -> list[tuple[int, int]] | None:
    """ "4096x4096,7168x2048" -> [(4096, 4096), (7168, 2048)]."""
    if not text:
        return None
    return [tuple(int(x) for x in part.lower().split("x")) for part in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (CPU check of the script)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="matrices per batched job for expert shapes")
    ap.add_argument("--feed-gbps", type=float, default=2.0, help="host feed rate for the projection's I/O term")
    ap.add_argument("--shapes", help="only these shapes, e.g. 4096x4096,7168x2048")
    ap.add_argument("--deadline", type=float, help="seconds after which no further shape is started")
    ap.add_argument("--solver", help="force a gram64 solver path (compute/solver.PATHS)")
    ap.add_argument("--json", type=Path, help="where the JSON goes (default bench/results/gpu.json on a GPU)")
    ap.add_argument("--no-write", action="store_true", help="no RESULTS.md section; the JSON to a temporary file")
    args = ap.parse_args()
    if args.device == "cuda":
        args.device = "cuda:0"
    target = args.json
    if target is None:
        on_gpu = args.device != "cpu" and args.scale == 1 and not args.no_write
        target = RESULTS_JSON if on_gpu else Path(tempfile.mkdtemp(prefix="streamscan-gpu-")) / "gpu.json"
    target.parent.mkdir(parents=True, exist_ok=True)

    def save(data: dict) -> None:
        target.write_text(json.dumps(data, indent=1) + "\n")

    data = run(
        args.device,
        args.scale,
        args.repeat,
        args.batch,
        args.feed_gbps,
        parse_shapes(args.shapes),
        args.deadline,
        args.solver,
        save,
    )
    save(data)
    text = markdown(data)
    print(text)
    print(f"JSON: {target}")
    if not args.no_write:
        update_section("gpu", text)


if __name__ == "__main__":
    main()
