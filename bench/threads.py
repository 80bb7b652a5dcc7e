"""Jobs in parallel vs threads per job on the CPU, side by side in one run (the basis of placement.cpu_threads).

For each shape: one job on 1 thread, one job on all threads, and as many 1-thread jobs in parallel as there
are cores (throughput per job). Alternating repeats; best of each (noise only adds time).

Run: python -m bench.threads [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from bench.common import update_section
from streamscan.compute.devices import default_workers
from streamscan.compute.spectrum import score

SHAPES = [(512, 512), (1024, 2816), (2048, 5632)]


def one(W: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    score(W)
    return time.perf_counter() - start


def parallel(W: torch.Tensor, jobs: int) -> float:
    """Wall seconds per job when JOBS one-thread jobs run at once."""

    def run() -> None:
        torch.set_num_threads(1)
        score(W)

    threads = [threading.Thread(target=run) for _ in range(jobs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cores = default_workers()
    before = torch.get_num_threads()
    rows = []
    for shape in SHAPES:
        W = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        best = {"1": [], "all": [], "par": []}
        for _ in range(args.repeat):
            best["1"].append(one(W, 1))
            best["all"].append(one(W, cores))
            best["par"].append(parallel(W, cores))
        b = {k: min(v) for k, v in best.items()}
        rows.append((shape, b))
        print(shape, {k: round(v, 3) for k, v in b.items()}, flush=True)
    torch.set_num_threads(before)
    table = "\n".join(
        f"| {m}×{n} | {b['1']:.3f} s | {b['all']:.3f} s ({b['1'] / b['all']:.2f}×) | {b['par']:.3f} s ({b['1'] / b['par']:.2f}×) |"
        for (m, n), b in rows
    )
    text = f"""## CPU: threads per job vs jobs in parallel (`python -m bench.threads`)
gram64 on bf16 random matrices, {cores} physical cores, best of {args.repeat} alternating repeats (1-minute load
average {os.getloadavg()[0]:.1f} at the end; the machine is shared). Speed-ups against one job on one thread.

| shape | 1 job, 1 thread | 1 job, {cores} threads | {cores} jobs × 1 thread (wall per job) |
|---|---|---|---|
{table}

Jobs in parallel give the larger throughput, so the scheduler runs one job per core on one thread and lets a
job use idle cores only at the tail, when nothing else waits (placement.cpu_threads)."""
    print(text)
    update_section("threads", text)


if __name__ == "__main__":
    main()
