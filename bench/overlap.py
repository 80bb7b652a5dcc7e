"""Is I/O hidden? Wall time of a CPU scan against its compute floor, measured side by side in one run.

floor: the same pool (same workers, threads, placement) on tensors already in memory (no reading at all).
scan:  the full pipeline from disk with the shards evicted from the page cache first (posix_fadvise
       DONTNEED), prefetch on (the default) and off (each worker reads its own tensor).
Rounds alternate floor / scan / scan-without-prefetch so that a noisy neighbour hits all of them alike.

Run: python -m bench.overlap [--rounds 2]   (uses a ~0.5 GB bf16 checkpoint cached under ~/.cache/streamscan-bench)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import streamscan.compute.reading as reading
import streamscan.compute.scheduler as scheduler
import streamscan.compute.staging as staging
from bench.common import checkpoint, update_section
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import read_tensor
from streamscan.checkpoint.source import resolve
from streamscan.compute.devices import default_workers
from streamscan.planning.plan import make_plan


def evict(root: Path) -> None:
    for shard in root.glob("*.safetensors"):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def floor(jobs, memory: dict) -> tuple[float, float]:
    """Wall and summed compute seconds of the pool on in-memory tensors."""
    real, real_many = staging.read_tensor, reading.read_many
    staging.read_tensor = lambda info: memory[info.name]
    reading.read_many = lambda infos, stored=False: [memory[i.name] for i in infos]
    try:
        stats = scheduler.PoolStats()
        start = time.perf_counter()
        results = list(scheduler.run_jobs(jobs, stats=stats))
        return time.perf_counter() - start, sum(r.seconds for r in results)
    finally:
        staging.read_tensor, reading.read_many = real, real_many


def scan(root: Path, jobs, prefetch: bool) -> tuple[float, dict]:
    evict(root)
    stats = scheduler.PoolStats()
    start = time.perf_counter()
    list(scheduler.run_jobs(jobs, stats=stats, prefetch=None if prefetch else 0))
    return time.perf_counter() - start, stats.summary()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = checkpoint("llama16-h1024-f2816", layers=16, hidden=1024, ffn=2816, kv=256, vocab=32000, layers_per_shard=8)
    jobs = make_plan(build_index(resolve(root))).jobs
    memory = {j.tensor.name: read_tensor(j.tensor) for j in jobs}
    gb = sum(t.nbytes for t in memory.values()) / 1e9
    rows: dict[str, list[float]] = {"floor": [], "scan": [], "scan, no prefetch": []}
    busy, summaries = [], []
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        wall, compute = floor(jobs, memory)
        rows["floor"].append(wall)
        busy.append(compute)
        for name, pre in (("scan", True), ("scan, no prefetch", False)):
            wall, summary = scan(root, jobs, pre)
            rows[name].append(wall)
            if pre:
                summaries.append(summary)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in rows.items()}
    best = {k: min(v) for k, v in rows.items()}  # noise only ever adds time: the best round is the cleanest
    ratio = best["scan"] / best["floor"]
    nopre = best["scan, no prefetch"] / best["floor"]
    workers = default_workers()
    s = summaries[-1]
    text = f"""## CPU: scan wall vs its compute floor (`python -m bench.overlap`)
{len(jobs)} matrices ({gb:.2f} GB bf16; hidden 1024, ffn 2816, vocab 32000, 16 layers), {workers} CPU workers
(one torch thread each), default method, {args.rounds} alternating rounds; ratios of the best rounds (noise only
adds time), medians beside them. The floor is the same
pool on tensors already in memory; the scans read from disk after evicting the shards from the page cache.
The machine is shared: compare the ratios, not the seconds (1-minute load average {load_before:.1f} before,
{load_after:.1f} after, on {os.cpu_count()} CPUs).

| run | wall (best) | wall (median) | ratio to floor (best) |
|---|---|---|---|
| floor (no I/O) | {best["floor"]:.2f} s | {med["floor"]:.2f} s | 1.00 |
| scan (prefetch, default) | {best["scan"]:.2f} s | {med["scan"]:.2f} s | **{ratio:.2f}** |
| scan, prefetch off | {best["scan, no prefetch"]:.2f} s | {med["scan, no prefetch"]:.2f} s | {nopre:.2f} |

Sum of per-job compute seconds in the floor runs / workers: {statistics.median(busy) / workers:.2f} s.
Last scan: overlap (busy / wall / slots) {s["overlap"]:.2f}, reading {s["read_seconds"]:.2f} s in total,
{s["prefetched"]} of {len(jobs)} tensors prefetched, peak held {s["peak_held_mb"]:.0f} MB.
Target: wall ≤ 1.3 × floor — {"met" if ratio <= 1.3 else "NOT met"}."""
    print(text)
    update_section("overlap", text)


if __name__ == "__main__":
    main()
