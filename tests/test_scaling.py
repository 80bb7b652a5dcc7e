"""Every whole-scan operation is O(n log n) in the number of matrices: doubling n roughly doubles its time.

Synthetic MoE scans (journal header + results, no checkpoint) of n and 2n matrices, timed side by side
(best of 5 each, alternating, so a busy machine slows both alike). A quadratic step gives a ratio near 4.
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamscan.api import merge, moe_report, report, select, status
from streamscan.records import ExpertRow, Fingerprint, Result, ScanHeader, Skipped
from streamscan.results.journal import Journal, read_journals

N = 6000
LIMIT = 3.0  # t(2n) / t(n); linear is 2, quadratic 4


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
    rng = random.Random(n)
    rows = names(n)
    header = ScanHeader(
        version="test",
        fingerprint=Fingerprint("m", (("model.safetensors", 1, "0" * 64),), "gram64"),
        model="m",
        slug="m",
        targets=tuple(sorted(r[0] for r in rows)),
        skipped=tuple((r[0].replace("mlp.gate", "input_layernorm"), "1-D") for r in rows if r[4] == "router"),
        experts=tuple(
            ExpertRow(name, layer, e if proj != "router" else "", proj if proj != "router" else "", name, "expert")
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
            status_ = "ok" if snr is not None else "null"
            journal.append(
                Result(
                    name=name,
                    type=type_,
                    shape=(64, 32),
                    dtype="BF16",
                    snr=snr,
                    status=status_,
                    reason="x" if snr is None else None,
                    seconds=0.001,
                )
            )
    return out


def ratio(run, small, large) -> float:
    """t(large) / t(small), best of 5, the garbage collector paused while timing (its full collections
    land in one run or the other: noise of up to 1.5x, not the algorithm's cost)."""
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


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scaling")
    return scan_dir(root, N), scan_dir(root, 2 * N)


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda out: select(out, 30), id="select"),
        pytest.param(lambda out: merge(out, [25, 50]), id="merge-and-outputs"),
        pytest.param(status, id="status"),
        pytest.param(moe_report, id="moe-report"),
        pytest.param(report, id="report"),
        pytest.param(read_journals, id="resume-replay"),
    ],
)
def test_whole_scan_operation_scales_linearly(dirs, operation):
    assert ratio(operation, *dirs) < LIMIT


def test_inspect_overview_scales_linearly():
    from streamscan.cli.render import inspect_lines
    from streamscan.results.overview import overview

    def plan(n):
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
        consumed = [Skipped(j.name + ".weight_scale_inv", j.type + ".weight_scale_inv", "scale of x") for j in jobs]
        index = SimpleNamespace(source=SimpleNamespace(hub=None), shards=[shard], total_bytes=1)
        return index, SimpleNamespace(jobs=jobs, skipped=(), consumed=consumed)

    def run(n):
        index, p = plans[n]
        inspect_lines(index, p, overview(index, p, 2))

    plans = {n: plan(n) for n in (N, 2 * N)}
    assert ratio(run, N, 2 * N) < LIMIT
