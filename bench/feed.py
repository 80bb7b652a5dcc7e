"""Host feed: how fast the scheduler reads and stages a checkpoint for N devices that do no math, against
`cat FILES > /dev/null` from the page cache in the same run.

Run: python -m bench.feed                          (writes the "feed" section of bench/RESULTS.md)
     python -m bench.feed --ring-sizes               (staging's ring sizes side by side: section "feed-rings")
     python -m bench.feed --overlap                  (a GPU's copy beside its compute: section "feed-overlap")
     python -m bench.feed --cuda --checkpoint DIR    (on a GPU machine: the feed into the real GPUs, no math)
     python -m bench.feed --before /path/to/tree    (the same, with that tree's bench.feed beside it, round by round)
     python -m bench.feed --small --no-write        (a quick check of the script)

The devices are simulated GPUs that do no math (tests/fixtures/simulated.IdleGpu, a backends.Device): each
receives the job's matrix as a GPU worker does -- streamed through a ring of staging.RING × staging.CHUNK_BYTES
(staging.stream), FP8 weights as stored, to be dequantized on the device -- and returns at once; where a GPU's
copy engine would take each chunk, IdleGpu counts it. Rate = file bytes / wall seconds. Every round measures
`cat` and each configuration once, after every file was read once (page cache warm); the table gives the
medians over --repeat rounds and the median of each round's feed/cat ratio, so that a machine shared with
other work compares like with like. The row "1, one stream" limits the process to one stream at a time
(staging.RINGS: one ring, lent to one stream at a time; default one per core). Checkpoints are cached under ~/.cache/streamscan-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import CACHE, checkpoint, update_section
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.compute import staging
from streamscan.compute.devices import default_workers
from streamscan.compute.scheduler import PoolStats, run_jobs
from streamscan.planning.plan import make_plan
from tests.fixtures.simulated import IdleGpu

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


def cat_rate(paths: list[Path]) -> float:
    size = sum(p.stat().st_size for p in paths)
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return size / (time.perf_counter() - start)


def pread_rate(paths: list[Path], chunk: int, buffers: int, threads: int = 1, fresh: bool = False) -> float:
    """Bytes per second of pread alone (no scheduler) over PATHS into BUFFERS reused buffers of CHUNK bytes
    (a new one per read with FRESH), the files split among THREADS threads: the floors of the feed's design."""

    def work(part: list[Path]) -> None:
        ring = [torch.empty(chunk, dtype=torch.uint8).numpy() for _ in range(buffers)]
        k = 0
        for path in part:
            fd = os.open(path, os.O_RDONLY)
            try:
                size, pos = path.stat().st_size, 0
                while pos < size:
                    buf = torch.empty(chunk, dtype=torch.uint8).numpy() if fresh else ring[k % buffers]
                    k += 1
                    pos += os.preadv(fd, [memoryview(buf)[: min(chunk, size - pos)]], pos)
            finally:
                os.close(fd)

    workers = [threading.Thread(target=work, args=(paths[i::threads],)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(p.stat().st_size for p in paths) / (time.perf_counter() - start)


FLOORS = {  # name -> pread_rate arguments after the paths
    f"a ring of {staging.RING} × {staging.CHUNK_BYTES >> 20} MiB, one thread": (staging.CHUNK_BYTES, staging.RING),
    f"a ring of {staging.RING} × {staging.CHUNK_BYTES >> 20} MiB, one thread per core": (
        staging.CHUNK_BYTES,
        staging.RING,
        default_workers(),
    ),
    "a ring of 4 × 2 MiB, one thread": (2 << 20, 4),
    "one reused 64 MiB buffer, one thread": (64 << 20, 1),
    "a fresh 64 MiB buffer per read, one thread": (64 << 20, 1, 1, True),
}


def feed_rate(ck: Path, devices: int, streams: int | None = None, busy=None) -> dict:
    """One run of the scheduler over CK's jobs with DEVICES fake GPUs (STREAMS: streams at once, else the
    default of one per core; BUSY: each fake GPU's seconds of work per matrix, a function of its bytes)."""
    jobs = make_plan(build_index(resolve(ck))).jobs
    size = sum(p.stat().st_size for p in files(ck))
    gpus = [IdleGpu(f"cuda:{i}", busy=busy) for i in range(devices)]
    stats = PoolStats()
    rings = staging.RINGS
    if streams:
        staging.RINGS = staging.Rings(streams)
    try:
        start = time.perf_counter()
        results = list(run_jobs(jobs, "gram64", 1, devices=gpus, stats=stats))
        wall = time.perf_counter() - start
    finally:
        staging.RINGS = rings
    assert len(results) == len(jobs) and all(r.status == "ok" for r in results), "a fake device failed a job"
    stored = sum(j.tensor.nbytes + (j.tensor.quant.scale.nbytes if j.tensor.quant else 0) for j in jobs)
    assert sum(g.taken for g in gpus) == stored, "the fake devices did not receive every byte"
    return {
        "devices": devices,
        "streams": streams,
        "jobs": len(jobs),
        "seconds": wall,
        "read_seconds": stats.read_seconds,
        "rate": size / wall,
    }


def cuda_feed(ck: Path, repeat: int, out: Path | None) -> None:
    """The feed into the real GPUs (pinned ring buffers, copies on the copy stream, event waits) with no math:
    each job's "score" waits for its copies and returns. `cat` just before each run, as above."""
    import torch

    from streamscan.compute.backends import CudaDevice
    from streamscan.compute.spectrum import SNR

    if not torch.cuda.is_available():
        raise SystemExit("bench.feed --cuda: torch sees no CUDA GPU here")

    class CopyOnlyGpu(CudaDevice):
        shown = "copy only"

        def rates(self):
            return None

        def score(self, matrix, method, path):
            torch.cuda.current_stream(self.index).synchronize()  # the copies it waits for are done
            return SNR(1.0)

        def score_batch(self, stack, method, path):
            torch.cuda.current_stream(self.index).synchronize()
            return [SNR(1.0)] * len(getattr(stack, "weight", stack))

    jobs = make_plan(build_index(resolve(ck))).jobs
    size = sum(p.stat().st_size for p in files(ck))
    gpus = torch.cuda.device_count()
    cat_rate(files(ck))  # warm the page cache
    rows = []
    for n in sorted({1, gpus}):
        ratios, rates = [], []
        for _ in range(repeat):
            cat = cat_rate(files(ck))
            start = time.perf_counter()
            results = list(run_jobs(jobs, "gram64", 1, devices=[CopyOnlyGpu(f"cuda:{i}") for i in range(n)]))
            rate = size / (time.perf_counter() - start)
            assert all(r.status == "ok" for r in results) and len(results) == len(jobs)
            rates.append(rate)
            ratios.append(rate / cat)
        row = {
            "gpus": n,
            "gb": size / 1e9,
            "rate_gb_s": statistics.median(rates) / 1e9,
            "ratio": statistics.median(ratios),
        }
        rows.append(row)
        print(f"{n} GPU(s): {row['rate_gb_s']:.2f} GB/s = {row['ratio']:.2f}x cat", flush=True)
    if out is not None:
        out.write_text(json.dumps(rows, indent=1))


def overlap(ck: Path, repeat: int, write: bool) -> None:
    """One fake GPU whose work on the whole checkpoint takes as long as the feed alone took just before in
    the same round: the wall with its two worker slots (one streams while the other computes) against one
    slot (read, then compute)."""
    import streamscan.compute.scheduler as scheduler

    size = sum(p.stat().st_size for p in files(ck))
    walls: dict[str, list[float]] = {"feed alone": [], "two slots": [], "one slot": []}
    saved = scheduler.GPU_SLOTS
    try:
        for _ in range(repeat):
            alone = feed_rate(ck, 1)["seconds"]
            walls["feed alone"].append(alone)
            for name, slots in (("two slots", 2), ("one slot", 1)):
                scheduler.GPU_SLOTS = slots
                got = feed_rate(ck, 1, busy=lambda nbytes, alone=alone: nbytes / size * alone)
                walls[name].append(got["seconds"] / alone)
    finally:
        scheduler.GPU_SLOTS = saved
    walls["feed alone"] = [1.0] * repeat
    rows = "\n".join(f"| {name} | {statistics.median(w):.2f}× |" for name, w in walls.items())
    text = f"""## Copy and compute overlapped (`python -m bench.feed --overlap`)
bench.feed's bf16 checkpoint ({size / 1e9:.2f} GB) and one fake GPU whose work (time.sleep per matrix, in
proportion to its bytes: a host thread waiting for its GPU) adds up to the wall of the feed alone, measured just
before in the same round. Median over {repeat} rounds of each wall / that round's feed alone. Ideal: 1× when the
copy of each job overlaps the computation of the one before, 2× when they take turns.

| configuration | wall / feed alone |
|---|---|
{rows}"""
    print(text)
    if write:
        update_section("feed-overlap", text)


RING_SIZES = [(1 << 20, 2), (2 << 20, 2), (2 << 20, 4), (512 << 10, 4)]  # (CHUNK_BYTES, RING) compared


def ring_sizes(cks: dict[str, Path], repeat: int, write: bool) -> None:
    """The feed with each ring size of RING_SIZES, side by side in each round (1 and 4 fake devices)."""
    saved = staging.CHUNK_BYTES, staging.RING, staging.RINGS
    out: dict[tuple, list[float]] = {}
    try:
        for _ in range(repeat):
            for chunk, ring in RING_SIZES:
                staging.CHUNK_BYTES, staging.RING, staging.RINGS = chunk, ring, staging.Rings(default_workers())
                for kind, ck in cks.items():
                    for n in (1, 4):
                        cat = cat_rate(files(ck))
                        out.setdefault((chunk, ring, kind, n), []).append(feed_rate(ck, n)["rate"] / cat)
    finally:
        staging.CHUNK_BYTES, staging.RING, staging.RINGS = saved
    rows = "\n".join(
        f"| {ring} × {chunk >> 10} KiB | "
        + " | ".join(f"{statistics.median(out[(chunk, ring, k, n)]):.2f}×" for k in cks for n in (1, 4))
        + " |"
        for chunk, ring in RING_SIZES
    )
    text = f"""## Ring sizes (`python -m bench.feed --ring-sizes`)
bench.feed's checkpoints, one and four fake devices, each ring size in turn in each of {repeat} rounds (`cat` just
before each run); median feed/cat. In use: {staging.RING} × {staging.CHUNK_BYTES >> 10} KiB.

| ring | bf16, 1 | bf16, 4 | fp8, 1 | fp8, 4 |
|---|---|---|---|---|
{rows}"""
    print(text)
    if write:
        update_section("feed-rings", text)


def before_round(tree: Path, devices: str, small: bool) -> list[dict]:
    """One round of TREE's own bench.feed (one measurement of each configuration), in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        args = [
            sys.executable,
            "-m",
            "bench.feed",
            "--repeat",
            "1",
            "--devices",
            devices,
            "--no-write",
            "--json",
            str(out),
        ]
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run(args + (["--small"] if small else []), cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (medians are reported)")
    ap.add_argument("--small", action="store_true", help="small checkpoints (a check of the script)")
    ap.add_argument("--before", type=Path, help="a tree (e.g. a git worktree of an older commit) measured beside")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--ring-sizes", action="store_true", help="compare ring sizes instead (section feed-rings)")
    ap.add_argument("--overlap", action="store_true", help="copy/compute overlap instead (section feed-overlap)")
    ap.add_argument("--cuda", action="store_true", help="the feed into the real GPUs instead (with --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, help="with --cuda: a safetensors checkpoint to feed")
    args = ap.parse_args()
    if args.cuda:
        cuda_feed(args.checkpoint, args.repeat, args.json)
        return
    shape, tag = (SMALL, "small") if args.small else (SHAPE, "1g")
    cks = {
        "bf16": checkpoint(f"feed-bf16-{tag}", **shape, layers_per_shard=2),
        "fp8": fp8_checkpoint(f"feed-fp8-{tag}", shape),
    }
    if args.overlap:
        cat_rate(files(cks["bf16"]))  # warm the page cache
        overlap(cks["bf16"], args.repeat, not args.no_write)
        return
    if args.ring_sizes:
        for ck in cks.values():
            cat_rate(files(ck))  # warm the page cache
        ring_sizes(cks, args.repeat, not args.no_write)
        return
    configs = [(int(x), None) for x in args.devices.split(",")] + [(1, 1)]
    samples: dict[tuple, dict[str, list[float]]] = {}
    for ck in cks.values():
        cat_rate(files(ck))  # warm the page cache
    floors: dict[str, list[float]] = {}
    for r in range(args.repeat):
        cats = {kind: cat_rate(files(ck)) for kind, ck in cks.items()}
        for name, how in FLOORS.items():
            floors.setdefault(name, []).append(pread_rate(files(cks["bf16"]), *how) / cats["bf16"])
        old = before_round(args.before, args.devices, args.small) if args.before else []
        for kind, ck in cks.items():
            for n, streams in configs:
                s = samples.setdefault(
                    (kind, n, streams), {"cat": [], "after": [], "before": [], "before_cat": [], "jobs": []}
                )
                cat = cat_rate(files(ck))  # just before: the ratio compares like with like on a noisy host
                got = feed_rate(ck, n, streams)
                s["cat"].append(cat)
                s["after"].append(got["rate"])
                s["jobs"].append(got["jobs"])
                prior = [o for o in old if o["kind"] == kind and o["devices"] == n and o.get("streams") == streams]
                if prior:
                    s["before"].append(prior[0]["rate"])
                    s["before_cat"].append(cats[kind])
                print(
                    f"round {r + 1}: {kind} {n} fake device(s){', one stream' if streams else ''}: after {got['rate'] / 1e9:.2f} GB/s"
                    + (f", before {prior[0]['rate'] / 1e9:.2f} GB/s" if prior else "")
                    + f", cat {cat / 1e9:.2f} GB/s",
                    flush=True,
                )
    rows = []
    for (kind, n, streams), s in samples.items():
        gb = sum(p.stat().st_size for p in files(cks[kind])) / 1e9
        row = {
            "kind": kind,
            "gb": gb,
            "devices": n,
            "streams": streams,
            "jobs": s["jobs"][0],
            "cat_rate": statistics.median(s["cat"]),
            "rate": statistics.median(s["after"]),
            "ratio": statistics.median(a / c for a, c in zip(s["after"], s["cat"])),
        }
        if s["before"]:
            row["before_rate"] = statistics.median(s["before"])
            row["before_ratio"] = statistics.median(b / c for b, c in zip(s["before"], s["before_cat"]))
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    before = bool(args.before)
    head = "| checkpoint | size | fake devices | cat rate |" + (" before | before / cat |" if before else "")
    head += " feed rate | **feed / cat** |\n|---|---|---|---|" + ("---|---|" if before else "") + "---|---|"
    table = "\n".join(
        f"| {r['kind']} | {r['gb']:.2f} GB | {r['devices']}{', one stream' if r['streams'] else ''} | {r['cat_rate'] / 1e9:.2f} GB/s |"
        + (f" {r['before_rate'] / 1e9:.2f} GB/s | {r['before_ratio']:.2f}× |" if "before_rate" in r else "")
        + (" – | – |" if before and "before_rate" not in r else "")
        + f" {r['rate'] / 1e9:.2f} GB/s | **{r['ratio']:.2f}×** |"
        for r in rows
    )
    floor_table = "\n".join(f"| {name} | {statistics.median(v):.2f}× |" for name, v in floors.items())
    text = f"""## Host feed with devices that do no math (`python -m bench.feed`)
Synthetic Llama ({shape["layers"]} layers, hidden {shape["hidden"]}, ffn {shape["ffn"]}); bf16 in shards, FP8 (128×128 block
scales, embeddings bf16) in one file. Each fake device (tests/fixtures/simulated.IdleGpu) receives the job's matrix
as a GPU worker does -- streamed through a ring of {staging.RING} × {staging.CHUNK_BYTES >> 20} MiB host buffers (staging.stream; a batch as one
[B, m, n] tensor, FP8 weights as stored, to be dequantized on the device), each chunk counted where a GPU's copy
engine would take it -- and returns; every run checks that the devices took every stored byte. Two worker slots
per device; at most one stream per core at a time ("one stream": one in all). Rate = file bytes / wall, page cache
warm; `cat` = `cat FILES > /dev/null` (one process, one core), measured just before each configuration. Each of
{args.repeat} rounds measures every configuration once; medians, and the median of the rounds' feed/cat ratios
(FP8 counted in stored bytes).{" Before: the tree at " + _describe(args.before) + ", its own bench.feed run in each round beside this one." if before else ""}

{head}
{table}

Floors, measured in the same rounds (pread alone over the bf16 files, no scheduler; median ratio to the round's
cat):

| pread into | / cat |
|---|---|
{floor_table}

Targets (2 cores): bf16 ≥ 0.7× cat; FP8 ≥ 0.5× cat. Not measured here (no GPU on this machine): the DMA from
the pinned ring buffers and the waits for it before a buffer is reused (`bash bench/gpu_check.sh`'s scan step
measures the feed with both on a GPU)."""
    print(text)
    if args.json:
        args.json.with_suffix(".floors.json").write_text(
            json.dumps({k: statistics.median(v) for k, v in floors.items()})
        )
    if not args.no_write:
        update_section("feed", text)


def _describe(tree: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return f"commit {commit.stdout.strip()}" if commit.returncode == 0 else str(tree)
    except OSError:
        return str(tree)


if __name__ == "__main__":
    main()
