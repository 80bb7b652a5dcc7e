"""Batching: time per matrix of score_batch (one stacked Gram + one batched eigvalsh) against score one by
one, side by side in one run, for shapes from 32x32 to DeepSeek-V3's expert 2048x7168 (scaled), B = 1..64.

python -m bench.batching [--device cpu] [--threads 1] [--scale 4] [--no-write]
Writes the "batching" section of bench/RESULTS.md. Ratio < 1: batching pays on this device.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import update_section
from streamscan.compute.spectrum import score, score_batch

SHAPES = [(32, 32), (64, 256), (128, 128), (256, 1024), (512, 512), (2048, 7168)]
BATCHES = [1, 4, 16, 64]


def _best(fn, device: str, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def measure(shape, batch: int, device: str, rounds: int = 3) -> tuple[float, float, float]:
    """(seconds per matrix one by one, batched, max relative SNR difference)."""
    Ws = torch.randn(batch, *shape).to(torch.bfloat16).to(device)
    one = _best(lambda: [score(w, "gram64", device) for w in Ws], device, rounds) / batch
    many = _best(lambda: score_batch(Ws, "gram64", device), device, rounds) / batch
    a = [s.snr for s in score_batch(Ws, "gram64", device)]
    b = [score(w, "gram64", device).snr for w in Ws]
    return one, many, max(abs(x - y) / abs(y) for x, y in zip(a, b))


def run(device: str, scale: int, shapes=SHAPES, batches=BATCHES, budget: float = 1e9) -> list[dict]:
    rows = []
    for shape in shapes:
        small = (max(2, shape[0] // scale), max(2, shape[1] // scale)) if shape == (2048, 7168) else shape
        for batch in batches:
            if batch * small[0] * small[1] > budget:
                continue
            one, many, diff = measure(small, batch, device)
            rows.append(
                {"shape": small, "batch": batch, "one": one, "batched": many, "ratio": many / one, "diff": diff}
            )
            print(
                f"{small} B={batch}: one {one * 1e3:.3f} ms, batched {many * 1e3:.3f} ms, "
                f"ratio {many / one:.2f}, SNR diff {diff:.1e}",
                flush=True,
            )
    return rows


def scan_rows(caps=(1, 16, 64, 256), rounds: int = 2) -> list[dict]:
    """The scheduler's whole path (read, dequantize, batch, score, results) over the 10,127 matrices of the
    16-layer DeepSeek-V3-shaped checkpoint of bench/scale.py (hidden 64: tiny FP8 matrices), 2 CPU workers,
    with at most CAP tiny matrices per batched job; best of ROUNDS, the caps alternating."""
    from bench.common import CACHE
    from streamscan.api import inspect_model
    from streamscan.compute import placement, scheduler
    from tests.fixtures.scale import cached, write_deepseek_v3

    ck = cached(write_deepseek_v3, CACHE / "scale", mtp=False, layers=16, shards=43)
    jobs = inspect_model(ck)[1].jobs
    saved = placement.SMALL_BATCH_MAX, dict(placement.BATCH_MAX)
    best = {cap: float("inf") for cap in caps}
    try:
        for _ in range(rounds):
            for cap in caps:
                placement.SMALL_BATCH_MAX, placement.BATCH_MAX["cpu"] = cap, min(saved[1]["cpu"], cap)
                start = time.perf_counter()
                done = sum(1 for _ in scheduler.run_jobs(jobs, "gram64", workers=2, devices=["cpu"]))
                best[cap] = min(best[cap], time.perf_counter() - start)
                assert done == len(jobs)
    finally:
        placement.SMALL_BATCH_MAX, placement.BATCH_MAX = saved[0], saved[1]
    return [
        {"cap": c, "seconds": s, "per_matrix_us": 1e6 * s / len(jobs), "matrices": len(jobs)} for c, s in best.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a CPU worker uses 1)")
    ap.add_argument("--scale", type=int, default=4, help="divide the 2048x7168 expert shape on CPU")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.device, args.scale, budget=64 * 512 * 1792)
    name = torch.cuda.get_device_name() if args.device != "cpu" else f"CPU, {args.threads} thread(s)"
    table = "\n".join(
        f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | {r['one'] * 1e3:.3f} | {r['batched'] * 1e3:.3f} | "
        f"{r['ratio']:.2f} | {r['diff']:.1e} |"
        for r in rows
    )
    text = f"""## Batching: one stacked job vs one by one (`python -m bench.batching`)
Device: {name}. gram64, bf16 inputs, best of 3, both ways side by side in one run. ratio = batched / one by one
per matrix (< 1: batching pays). SNR diff = max relative difference batched vs one by one.

| shape | B | one by one ms/matrix | batched ms/matrix | ratio | SNR diff |
|---|---|---|---|---|---|
{table}"""
    if args.device == "cpu":
        scans = scan_rows()
        base = scans[0]["seconds"]
        text += f"""

Whole scheduler path (`bench.batching.scan_rows`: read, dequantize, batch, score, results) over the
{scans[0]["matrices"]:,} tiny FP8 matrices of bench/scale.py's 16-layer DeepSeek-V3 shape, 2 CPU workers, best of 2,
the batch caps alternating in one run (placement.SMALL_BATCH_MAX):

| most tiny matrices per job | wall | µs per matrix | vs 1 |
|---|---|---|---|
""" + "\n".join(
            f"| {r['cap']} | {r['seconds']:.2f} s | {r['per_matrix_us']:.0f} | {r['seconds'] / base:.2f} |"
            for r in scans
        )
    print(text)
    if not args.no_write:
        update_section("batching", text)


if __name__ == "__main__":
    main()
