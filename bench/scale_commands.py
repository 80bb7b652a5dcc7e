"""Whole-scan commands at 70k matrices: `select`, `status`, `report`, `merge` and `inspect` on a finished
Kimi-K2-shaped scan (69,670 matrices, made-up SNRs: the commands do not care how they were computed), each
timed as a user runs it (a fresh `python -m streamscan` process, start-up included), against the target of
10 s on 2 cores; and each one's growth: t(2n) / t(n) at n = 6000 and 12000 (in-process, best of 5, side
by side, so a busy machine slows both alike): about 2 for O(n log n), 4 for a quadratic step.

Run: python -m bench.scale_commands   (also part of `python -m bench.scale`; a few minutes on 2 busy cores)
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.common import measure, python, update_section

TARGET_SECONDS = 10.0  # every whole-scan command at 70k matrices on 2 cores
GROWTH_LIMIT = 3.0  # t(2n) / t(n): linear is 2, quadratic 4
N = 6000


def kimi_journal(kimi: Path, out: Path) -> int:
    """A finished scan of KIMI in OUT with made-up SNRs; the number of matrices."""
    from streamscan.api import inspect_model
    from streamscan.pipeline import scan_header
    from streamscan.records import Result, ScanOptions
    from streamscan.results.journal import Journal

    index, full = inspect_model(str(kimi), (), ())
    header = scan_header(index, full, ScanOptions.of())
    rng = random.Random(0)
    with Journal(out, header, fresh=True) as journal:
        for job in full.jobs:
            journal.append(
                Result(
                    name=job.name,
                    type=job.type,
                    shape=job.shape,
                    dtype=job.tensor.dtype,
                    snr=rng.random(),
                    status="ok",
                    role=job.role,
                    seconds=0.001,
                    worker="cpu0",
                )
            )
    return len(full.jobs)


def at_70k(kimi: Path, tmp: Path) -> tuple[int, dict[str, dict]]:
    out = tmp / "kimi"
    n = kimi_journal(kimi, out)
    rows = {}
    for name, args in {
        "select -p 30": ["select", "--out", str(out), "-p", "30"],
        "status": ["status", "--out", str(out)],
        "report": ["report", "--out", str(out)],
        "merge -p 25 -p 50": ["merge", "--out", str(out), "-p", "25", "-p", "50"],
        "inspect": ["inspect", str(kimi)],
    }.items():
        rows[name] = measure([python(), "-m", "streamscan", *args])
        print(f"{name} at {n} matrices: {rows[name]['wall']:.2f} s", flush=True)
    return n, rows


# --- growth: synthetic MoE scans of n and 2n matrices (journal only, no checkpoint) ---------------------


def names(n: int) -> list[tuple[str, str, int, int | str, str]]:
    """(name, type, layer, expert, projection) of an MoE model with n matrices: 64 experts a layer."""
    out = []
    layer = 0
    while len(out) < n:
        p = f"model.layers.{layer}."
        out += [(p + f"self_attn.{k}_proj", f"self_attn.{k}_proj", layer, "", "") for k in "qkvo"]
        out.append((p + "mlp.gate", "mlp.gate", layer, "", "router"))
        for e in range(64):
            for proj in ("gate", "up", "down"):
                out.append((p + f"mlp.experts.{e}.{proj}_proj", f"mlp.experts.{e}.{proj}_proj", layer, e, proj))
        layer += 1
    return out[:n]


def scan_dir(root: Path, n: int) -> Path:
    from streamscan.records import ExpertRow, Fingerprint, Result, ScanHeader
    from streamscan.results.journal import Journal

    rng = random.Random(n)
    rows = names(n)
    header = ScanHeader(
        version="bench",
        fingerprint=Fingerprint("m", (("model.safetensors", 1, "0" * 64),), "gram64"),
        model="m",
        slug="m",
        targets=tuple(sorted(r[0] for r in rows)),
        skipped=tuple((r[0].replace("mlp.gate", "input_layernorm"), "1-D") for r in rows if r[4] == "router"),
        experts=tuple(
            ExpertRow(name, layer, e, proj, name, "expert")
            if isinstance(e, int)
            else ExpertRow(name, layer, "", "", name, "router")
            for name, _, layer, e, proj in rows
            if proj
        ),
    )
    out = root / f"n{n}"
    with Journal(out, header, commit_records=100_000, commit_seconds=600) as journal:
        for name, type_, *_ in rows:
            snr = None if rng.random() < 0.01 else rng.random()
            journal.append(
                Result(
                    name=name,
                    type=type_,
                    shape=(64, 32),
                    dtype="BF16",
                    snr=snr,
                    status="ok" if snr is not None else "null",
                    reason="x" if snr is None else None,
                    seconds=0.001,
                )
            )
    return out


def ratio(run, small, large) -> float:
    """t(large) / t(small), best of 5, alternating; the collector paused while timing (its full collections
    land in one run or the other: noise, not the algorithm's cost)."""
    best = {small: float("inf"), large: float("inf")}
    for _ in range(5):
        for arg in (small, large):
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                run(arg)
                best[arg] = min(best[arg], time.perf_counter() - start)
            finally:
                gc.enable()
    return best[large] / best[small]


def _inspect_plan(n: int):
    shard = SimpleNamespace(name="model.safetensors", path=Path("/nonexistent/model.safetensors"), size=1)
    jobs = [
        SimpleNamespace(
            name=name,
            type=type_,
            shape=(64, 32),
            cost=1e6,
            tensor=SimpleNamespace(dtype="F8_E4M3", nbytes=2048, shard=shard.path),
        )
        for name, type_, *_ in names(n)
    ]
    from streamscan.records import Skipped

    consumed = [Skipped(j.name + ".weight_scale_inv", j.type + ".weight_scale_inv", "scale of x") for j in jobs]
    index = SimpleNamespace(source=SimpleNamespace(hub=None), shards=[shard], total_bytes=1)
    return index, SimpleNamespace(jobs=jobs, skipped=(), consumed=consumed)


def growth(tmp: Path, n: int = N) -> dict[str, float]:
    from streamscan.api import merge, moe_report, report, select, status
    from streamscan.cli.render import inspect_lines
    from streamscan.results.journal import read_journals
    from streamscan.results.overview import overview

    small, large = scan_dir(tmp, n), scan_dir(tmp, 2 * n)
    plans = {small: _inspect_plan(n), large: _inspect_plan(2 * n)}

    def inspect(d):
        index, plan = plans[d]
        inspect_lines(index, plan, overview(index, plan, 2))

    operations = {
        "select -p 30": lambda d: select(d, 30),
        "status": status,
        "report": report,
        "moe_report": moe_report,
        "merge -p 25 -p 50": lambda d: merge(d, [25, 50]),
        "resume (journal replay)": read_journals,
        "inspect": inspect,
    }
    out = {}
    for name, run in operations.items():
        out[name] = ratio(run, small, large)
        print(f"{name}: t(2n)/t(n) = {out[name]:.2f} at n = {n}", flush=True)
    return out


def lines(n_kimi: int, rows: dict[str, dict], ratios: dict[str, float], cpus: int) -> list[str]:
    out = [
        "## Whole-scan commands at 70k matrices (`python -m bench.scale_commands`)",
        f"A finished Kimi-K2-shaped scan ({n_kimi} matrices, tests/fixtures/scale.py), each command a fresh "
        f"`python -m streamscan` process (start-up included); {cpus} CPUs shared with other work. Target: "
        f"≤ {TARGET_SECONDS:g} s each and O(n log n): t(2n)/t(n) at n = {N} (in-process, best of 5) under "
        f"{GROWTH_LIMIT:g} (2 is linear, 4 quadratic).",
        "",
        "| command | matrices | wall | target | peak RSS | t(2n)/t(n) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        r = ratios.get(name)
        ok = "" if m["wall"] <= TARGET_SECONDS else " (over)"
        out.append(
            f"| `{name}` | {n_kimi} | {m['wall']:.2f} s{ok} | ≤ {TARGET_SECONDS:g} s | {m['peak_rss_mb']:.0f} MB | "
            f"{'' if r is None else f'{r:.2f}'} |"
        )
    for name, r in ratios.items():
        if name not in rows:
            out.append(f"| `{name}` (in-process) | | | | | {r:.2f} |")
    return out


def main() -> None:
    import os

    from bench.scale import _checkpoint

    kimi = _checkpoint("kimi")
    with tempfile.TemporaryDirectory() as tmp:
        n_kimi, rows = at_70k(kimi, Path(tmp))
        ratios = growth(Path(tmp))
    text = lines(n_kimi, rows, ratios, os.cpu_count() or 1)
    update_section("scale-commands", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
