"""Singular-value methods side by side: time (1 thread, same run) and SNR error vs float64 SVD.

Run: python -m bench.methods
Matrices are LLM-like: Gaussian bulk with lognormal column scales, a few outlier directions 5-50x the
bulk edge, stored as bf16 (the case where float32 shortcuts break). Also compares the two ways to use
2 cores: two jobs on one thread each (streamscan's scheduler) vs one job on two threads.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from bench.common import update_section
from streamscan.compute.spectrum import gram, score, snr_from_singular_values

SHAPES = [(2048, 5632), (5632, 2048), (2048, 2048), (256, 2048)]


def llm_like(m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.exp(
        0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    )
    k = 6
    u = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    edge = torch.linalg.matrix_norm(W, 2) if max(m, n) <= 2048 else (m**0.5 + n**0.5) * 1.6
    W += (u * torch.linspace(50, 5, k, dtype=torch.float64) * edge) @ v.T
    return W.to(torch.bfloat16)


def sv_eig(W, gram_dtype, eig_dtype):
    X = W.to(gram_dtype)
    G = X @ X.T if W.shape[0] <= W.shape[1] else X.T @ X
    e = torch.linalg.eigvalsh(G.to(eig_dtype)).double()
    return torch.sqrt(torch.clamp(e, min=0)).flip(0)


METHODS = {
    "gram64 (default)": lambda W: score(W, "gram64").snr,
    "fp64 gram, full product": lambda W: snr_from_singular_values(sv_eig(W, torch.float64, torch.float64), W.shape).snr,
    "fp32 gram + fp64 eigvalsh": lambda W: (
        snr_from_singular_values(sv_eig(W, torch.float32, torch.float64), W.shape).snr
    ),
    "fp64 gram + fp32 eigvalsh": lambda W: (
        snr_from_singular_values(sv_eig(W, torch.float64, torch.float32), W.shape).snr
    ),
    "svdvals32 as stored (reference)": lambda W: score(W, "svdvals32").snr,
    "svdvals32 on the tall side": lambda W: score(W if W.shape[0] >= W.shape[1] else W.T, "svdvals32").snr,
}


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for m, n in SHAPES:
        W = llm_like(m, n)
        tall = W if m >= n else W.T
        exact = score(tall.double(), "svdvals64").snr
        base = None
        for name, fn in METHODS.items():
            snr, t = timed(fn, W)
            base = base or t
            rows.append((f"{m}x{n}", name, t, t / base, abs(snr - exact) / exact))
            print(rows[-1], flush=True)
    # Two cores: two single-thread jobs at once vs one two-thread job after the other.
    W = llm_like(2048, 5632, seed=1)
    work = lambda: torch.linalg.eigvalsh(gram(W), UPLO="U")  # noqa: E731
    torch.set_num_threads(2)
    _, serial2 = timed(lambda: [work() for _ in range(4)])
    torch.set_num_threads(1)

    def worker():
        torch.set_num_threads(1)
        for _ in range(2):
            work()

    def parallel():
        ts = [threading.Thread(target=worker) for _ in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]

    _, par1 = timed(parallel)
    table = "\n".join(f"| {s} | {name} | {t:.2f} s | {r:.2f} | {e:.1e} |" for s, name, t, r, e in rows)
    update_section(
        "methods",
        f"""## Methods side by side (`python -m bench.methods`)
One thread each, same run, {os.cpu_count()} CPUs; LLM-like bf16 matrices (lognormal column scales, 6 outlier
directions 5-50x the bulk edge). Error: relative SNR difference from float64 `svdvals`.

| shape | method | time | vs gram64 | SNR error |
|---|---|---|---|---|
{table}

Using 2 cores for 4 matrices of 2048x5632 (gram64): one job at a time on 2 threads {serial2:.2f} s;
two jobs at once on 1 thread each {par1:.2f} s (**{serial2 / par1:.2f}x** throughput). streamscan's scheduler does the latter.""",
    )


if __name__ == "__main__":
    main()
