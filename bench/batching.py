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
    print(text)
    if not args.no_write:
        update_section("batching", text)


if __name__ == "__main__":
    main()
