"""GPU: per-shape time of the default method (gram64) against float32 svdvals on the same GPU, SNR agreement,
and a projection for whole 70B-class and Mixtral-8x22B scans on one GPU.

Run on a machine with CUDA: python -m bench.gpu            (writes the "gpu" section of bench/RESULTS.md)
Check the script on CPU with small shapes: python -m bench.gpu --device cpu --scale 16 --no-write

Projection: a scan's compute time = Σ over the model's matrices of the measured time of its shape (every
shape of both models is measured); its I/O time = bytes / --disk-gbps; with prefetch the wall is about
max(compute, I/O) plus the first read. Times are medians of --repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from bench.common import update_section
from streamscan.compute.spectrum import score

ISSUE_SHAPES = [(4096, 4096), (4096, 14336), (8192, 8192), (8192, 28672), (6144, 16384), (7168, 2048)]


def llama70b() -> Counter:
    """Llama-3-70B: hidden 8192, ffn 28672, 8 kv heads x 128, vocab 128256, 80 layers, untied head."""
    per_layer = [(8192, 8192), (1024, 8192), (1024, 8192), (8192, 8192), (28672, 8192), (28672, 8192), (8192, 28672)]
    c = Counter({s: 0 for s in per_layer})
    for s in per_layer:
        c[s] += 80
    c[(128256, 8192)] += 2
    return c


def mixtral8x22b() -> Counter:
    """Mixtral-8x22B: hidden 6144, expert ffn 16384, 8 experts, 8 kv heads x 128, vocab 32768, 56 layers."""
    c: Counter = Counter()
    for s in [(6144, 6144), (1024, 6144), (1024, 6144), (6144, 6144), (8, 6144)]:
        c[s] += 56
    for s in [(16384, 6144), (16384, 6144), (6144, 16384)]:
        c[s] += 56 * 8
    c[(32768, 6144)] += 2
    return c


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


def measure(shape, device: str, repeat: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(hash(shape) % 2**31)
    W = (torch.randn(shape, generator=g) / shape[1] ** 0.5).to(torch.bfloat16)
    k = min(shape)
    W[: k // 8] *= 4  # some strong directions, as trained weights have
    Wd = W.to(device)
    gram = timed(lambda: score(Wd, "gram64", device), device, repeat)
    magma = None
    if device != "cpu":  # the eigenvalue phase through MAGMA instead of cuSOLVER, for the record
        torch.backends.cuda.preferred_linalg_library("magma")
        try:
            magma = timed(lambda: score(Wd, "gram64", device), device, repeat)
        finally:
            torch.backends.cuda.preferred_linalg_library("default")
    ref = timed(lambda: score(Wd, "svdvals32", device), device, repeat)
    exact = score(W, "svdvals64").snr if max(shape) * min(shape) <= 8192 * 8192 and device == "cpu" else None
    s_gram, s_ref = score(Wd, "gram64", device).snr, score(Wd, "svdvals32", device).snr
    out = {
        "shape": shape,
        "gram64": gram,
        "gram64_magma": magma,
        "svdvals32": ref,
        "snr_gram64": s_gram,
        "snr_svdvals32": s_ref,
        "rel_diff": abs(s_gram - s_ref) / abs(s_gram),
    }
    if exact is not None:
        out["rel_err_gram64"] = abs(s_gram - exact) / abs(exact)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
        score(Wd, "gram64", device)
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    Wd = None  # free the device copy before the next shape
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (CPU check of the script)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--disk-gbps", type=float, default=2.0, help="read bandwidth assumed for the I/O term")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    models = {"Llama-3-70B": llama70b(), "Mixtral-8x22B": mixtral8x22b()}
    shapes = list(dict.fromkeys(ISSUE_SHAPES + [s for m in models.values() for s in m]))
    sc = args.scale
    rows = {}
    for shape in shapes:
        small = (max(2, shape[0] // sc), max(2, shape[1] // sc))
        r = measure(small, args.device, args.repeat)
        rows[shape] = r
        print(
            f"{shape} -> {small}: gram64 {r['gram64']:.3f} s, svdvals32 {r['svdvals32']:.3f} s, "
            f"speed-up {r['svdvals32'] / r['gram64']:.1f}x, SNR diff {r['rel_diff']:.1e}",
            flush=True,
        )
    name = torch.cuda.get_device_name() if args.device != "cpu" else "CPU"
    table = "\n".join(
        f"| {s[0]}×{s[1]} | {r['gram64']:.3f} s | {r['svdvals32']:.3f} s | {r['svdvals32'] / r['gram64']:.1f}× | "
        f"{r['rel_diff']:.1e} | {r.get('peak_gb', float('nan')):.2f} | "
        f"{'n/a' if r['gram64_magma'] is None else format(r['gram64_magma'], '.3f') + ' s'} |"
        for s, r in rows.items()
        if s in ISSUE_SHAPES
    )
    proj = []
    for model, counts in models.items():
        compute = sum(n * rows[s]["gram64"] for s, n in counts.items())
        ref = sum(n * rows[s]["svdvals32"] for s, n in counts.items())
        gb = sum(n * s[0] * s[1] * 2 for s, n in counts.items()) / 1e9
        io = gb / args.disk_gbps
        proj.append(
            f"| {model} | {sum(counts.values())} | {gb:.0f} GB | {compute / 60:.1f} min | {ref / 60:.1f} min | "
            f"{io / 60:.1f} min | **{max(compute, io) / 60:.1f} min** |"
        )
    text = f"""## GPU: per-shape times and whole-model projection (`python -m bench.gpu`)
Device: {name}{f" (dimensions divided by {sc})" if sc > 1 else ""}. bf16 weights with some strong directions; medians of {args.repeat}.
gram64 = float64 Gram + eigvalsh (the default); svdvals32 = the reference's float32 `torch.linalg.svdvals`.

| shape | gram64 | svdvals32 | speed-up | SNR rel. diff | gram64 peak GiB | gram64, MAGMA eigvalsh |
|---|---|---|---|---|---|---|
{table}

Projection for one device: compute = Σ over the model's matrices of its shape's measured time; I/O = bf16
bytes / {args.disk_gbps} GB/s; with prefetch the wall ≈ max(compute, I/O).

| model | matrices | bytes | gram64 compute | svdvals32 compute | I/O | projected wall |
|---|---|---|---|---|---|---|
{chr(10).join(proj)}

Target: 70B-class < 10 minutes on one H100."""
    print(text)
    if not args.no_write:
        update_section("gpu", text)


if __name__ == "__main__":
    main()
