"""The pipeline: resolve -> index -> plan -> (read, schedule, compute) -> journal -> report."""
from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import JournalError, UsageError
from .index import CheckpointIndex, build_index
from .journal import Journal, is_locked, read_journal
from .layout import module_name
from .plan import Plan, Result, make_plan
from .report import write_outputs, write_yaml
from .devices import default_workers, parse_devices, parse_size
from .scheduler import PoolStats, run_jobs
from .source import resolve, slugify
from .spectrum import DEFAULT_METHOD, METHODS

DEFAULT_OUT = "model_snr_results"
Progress = Callable[[Result, int, int, int], None]  # (result, done, total, bytes read this run)


@dataclass
class ScanResult:
    out_dir: Path
    results: list[Result]
    summary: dict
    paths: list[Path] = field(default_factory=list)

    @property
    def snr(self) -> dict[str, float | None]:
        return {r.name: r.snr for r in self.results}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fingerprint(index: CheckpointIndex, method: str, include: Iterable[str], exclude: Iterable[str]) -> dict:
    """What must match for a resume: the checkpoint's files and headers, the method and the target options."""
    return {
        "model": index.source.model_id,
        "shards": [[s.path.name, s.size, s.header_sha256] for s in index.shards],
        "method": method,
        "include": sorted(include),
        "exclude": sorted(exclude),
    }


def inspect_model(model: str | Path, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> tuple[CheckpointIndex, Plan]:
    """Headers only: what a scan would score and skip."""
    index = build_index(resolve(model))
    return index, make_plan(index, tuple(include), tuple(exclude))


def scan(
    model: str | Path,
    out: str | Path = DEFAULT_OUT,
    *,
    method: str = DEFAULT_METHOD,
    devices: str = "auto",
    cpu_workers: int | None = None,
    max_memory: int | str | None = None,
    top_percent: Iterable[float] = (),
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    fresh: bool = False,
    name: str | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Score every target matrix of MODEL, resuming the scan in OUT if there is one, and write the outputs.

    ``devices``: "auto" (every visible GPU, else the CPU), "cpu", or GPU indices mixed with "cpu" ("0,1,cpu").
    ``max_memory``: RAM for tensors read ahead and CPU work, bytes or "24G" (default: available minus headroom).
    """
    if method not in METHODS:
        raise UsageError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    percents = sorted(set(float(p) for p in top_percent))
    if any(not 0 < p <= 100 for p in percents):
        raise UsageError(f"--top-percent {percents}: each must be in (0, 100]")
    pool = parse_devices(devices)
    budget = parse_size(max_memory)
    include, exclude = tuple(include), tuple(exclude)
    started = time.perf_counter()
    index, full = inspect_model(model, include, exclude)
    if not full.jobs:
        raise UsageError(f"{model}: no 2-D weight matrices to score (check --include/--exclude)")
    source = index.source
    slug = slugify(name) if name else source.slug
    header = {
        "streamscan_journal": 1,
        "version": __version__,
        "fingerprint": fingerprint(index, method, include, exclude),
        "model": name or source.model_id,
        "slug": slug,
        "targets": sorted(j.name for j in full.jobs),
        "skipped": [[s.name, s.reason] for s in full.skipped],
    }
    out_dir = Path(out)
    workers = cpu_workers or default_workers()
    stats = PoolStats()
    read_bytes = 0
    with Journal(out_dir, header, fresh=fresh) as journal:
        plan = make_plan(index, include, exclude, journal.done())
        resumed = len(plan.done)
        sizes = {j.name: j.tensor.nbytes for j in plan.jobs}
        results = run_jobs(plan.jobs, method, workers, devices=pool, max_memory=budget, stats=stats)
        for done, result in enumerate(results, start=resumed + 1):
            journal.append(result)
            read_bytes += sizes[result.name]
            if progress:
                progress(result, done, full.total, read_bytes)
        results = [journal.results[n] for n in header["targets"] if n in journal.results]
    summary = _summary(header, results, method, workers, time.perf_counter() - started, resumed)
    summary["run"] = stats.summary() if plan.jobs else None
    summary["placement_notes"] = {r.name: r.note for r in results if r.note}
    paths = write_outputs(out_dir, slug, results, percents, _all_names(header), summary)
    return ScanResult(out_dir, results, summary, paths)


def _all_names(header: dict) -> list[str]:
    return list(header["targets"]) + [module_name(n) for n, _ in header["skipped"]]


def _count(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("ok", "null", "error")}


def _summary(header: dict, results: list[Result], method: str, workers: int, seconds: float, resumed: int) -> dict:
    count = _count(results)
    return {
        "model": header["model"],
        "method": method,
        "streamscan": __version__,
        "matrices": len(header["targets"]),
        "scored": count["ok"],
        "no_snr": count["null"],
        "failed": count["error"],
        "resumed_from_journal": resumed,
        "skipped": len(header["skipped"]),
        "seconds": round(seconds, 3),
        "compute_seconds": round(sum(r.seconds for r in results), 3),
        "cpu_workers": workers,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "failures": {r.name: r.reason for r in results if r.status == "error"},
        "skipped_tensors": dict(header["skipped"]),
    }


def load_results(out: str | Path) -> tuple[dict, list[Result]]:
    """The journal header and the results recorded so far (a finished or partial scan)."""
    out_dir = Path(out)
    if not (out_dir / "streamscan.journal.jsonl").is_file():
        raise JournalError(f"{out_dir}: no streamscan scan here; run `streamscan run MODEL --out {out_dir}` first")
    header, by_name, _ = read_journal(out_dir)
    return header, [by_name[n] for n in header["targets"] if n in by_name]


def select(out: str | Path, top_percent: float) -> Path:
    """Write the YAML for TOP_PERCENT from a finished or partial scan in OUT, without rescanning."""
    header, results = load_results(out)
    if not 0 < top_percent <= 100:
        raise UsageError(f"--top-percent {top_percent}: must be in (0, 100]")
    return write_yaml(Path(out), header["slug"], results, float(top_percent), _all_names(header), header["model"])


def status(out: str | Path) -> dict:
    """How far the scan in OUT got."""
    header, results = load_results(out)
    count = _count(results)
    total = len(header["targets"])
    return {
        "model": header["model"],
        "method": header["fingerprint"]["method"],
        "total": total,
        "done": count["ok"] + count["null"],
        "scored": count["ok"],
        "no_snr": count["null"],
        "failed": count["error"],
        "remaining": total - count["ok"] - count["null"],
        "running": is_locked(out),
        "compute_seconds": sum(r.seconds for r in results),
    }
