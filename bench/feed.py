"""Host feed: how fast the scheduler reads, dequantizes where it must, and stages a checkpoint for N devices
that do no math, against `cat FILES > /dev/null` from the page cache in the same run.

Run: python -m bench.feed            (writes the "feed" section of bench/RESULTS.md)
     python -m bench.feed --small --no-write     (a quick check of the script)

The devices are simulated with run_jobs' ``compute=`` and ``memory_probe=`` hooks (as the scheduler tests do):
each receives the job's tensor as a GPU worker would (bf16 batches stacked into the staging buffers, FP8
weights as stored, ``raw``) and returns at once. Rates are file bytes / wall seconds, best of --repeat,
after every file was read once (page cache warm). Checkpoints are cached under ~/.cache/streamscan-bench.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from bench.common import CACHE, checkpoint, update_section
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.compute.scheduler import PoolStats, run_jobs
from streamscan.compute.spectrum import SNR
from streamscan.planning.plan import make_plan

SHAPE = dict(layers=8, hidden=2048, ffn=5632, kv=512, vocab=32000)  # ~1.0 GB bf16, ~0.6 GB FP8
SMALL = dict(layers=2, hidden=512, ffn=1408, kv=128, vocab=4000)


def fp8_checkpoint(name: str, shape: dict) -> Path:
    from tests.fixtures.synthetic import LlamaShape
    from tests.fixtures.synthetic_quant import write_fp8_llama

    root = CACHE / name
    if not (root / "config.json").exists():
        write_fp8_llama(root, LlamaShape(**shape))
    return root


def files(ck: Path) -> list[Path]:
    return sorted(ck.glob("*.safetensors"))


def cat_rate(paths: list[Path], repeat: int) -> float:
    size = sum(p.stat().st_size for p in paths)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return size / best


def _fake_device():
    received = []

    def compute(tensor, method, device):
        received.append(device)
        return SNR(1.0)

    compute.raw = True  # take stored FP8 as read: the dequantization is the device's
    return compute, received


def feed_rate(ck: Path, devices: int, repeat: int) -> dict:
    jobs = make_plan(build_index(resolve(ck))).jobs
    size = sum(p.stat().st_size for p in files(ck))
    best, read = float("inf"), 0.0
    for _ in range(repeat):
        compute, received = _fake_device()
        stats = PoolStats()
        start = time.perf_counter()
        results = list(
            run_jobs(
                jobs,
                "gram64",
                1,
                devices=[f"cuda:{i}" for i in range(devices)],
                memory_probe=lambda d: (80 << 30, 80 << 30),
                compute=compute,
                stats=stats,
            )
        )
        wall = time.perf_counter() - start
        assert len(results) == len(jobs) and all(r.status == "ok" for r in results), "a fake device failed a job"
        if wall < best:
            best, read = wall, stats.read_seconds
    return {"devices": devices, "jobs": len(jobs), "seconds": best, "read_seconds": read, "rate": size / best}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="small checkpoints (a check of the script)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    shape, tag = (SMALL, "small") if args.small else (SHAPE, "1g")
    cks = {
        "bf16": checkpoint(f"feed-bf16-{tag}", **shape, layers_per_shard=2),
        "fp8": fp8_checkpoint(f"feed-fp8-{tag}", shape),
    }
    rows = []
    for kind, ck in cks.items():
        paths = files(ck)
        gb = sum(p.stat().st_size for p in paths) / 1e9
        cat_rate(paths, 1)  # warm the page cache
        cat = cat_rate(paths, args.repeat)
        for n in (int(x) for x in args.devices.split(",")):
            r = feed_rate(ck, n, args.repeat)
            r.update(kind=kind, gb=gb, cat_rate=cat, ratio=r["rate"] / cat)
            rows.append(r)
            print(
                f"{kind} {gb:.2f} GB, {n} fake device(s): {r['rate'] / 1e9:.2f} GB/s "
                f"(cat {cat / 1e9:.2f} GB/s, {r['ratio']:.2f}x), {r['jobs']} jobs in {r['seconds']:.2f} s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    table = "\n".join(
        f"| {r['kind']} | {r['gb']:.2f} GB | {r['devices']} | {r['rate'] / 1e9:.2f} GB/s | "
        f"{r['cat_rate'] / 1e9:.2f} GB/s | **{r['ratio']:.2f}×** |"
        for r in rows
    )
    text = f"""## Host feed with devices that do no math (`python -m bench.feed`)
Synthetic Llama ({shape["layers"]} layers, hidden {shape["hidden"]}, ffn {shape["ffn"]}); bf16 in shards, FP8 (128×128 block
scales, embeddings bf16) in one file. Each fake device receives the job's tensor as a GPU worker does (bf16
batches stacked into the staging buffers; FP8 weights as stored, to be dequantized on the device) and returns.
Rate = file bytes / wall, best of {args.repeat}, page cache warm; `cat` = `cat FILES > /dev/null` in the same run.

| checkpoint | size | fake devices | feed rate | cat rate | feed / cat |
|---|---|---|---|---|---|
{table}

Target: ≥ 0.7× cat for bf16. Not measured here: the host-to-device copy itself (no GPU), pinned buffers
(pinning needs CUDA)."""
    print(text)
    if not args.no_write:
        update_section("feed", text)


if __name__ == "__main__":
    main()
