"""The pipeline: resolve -> index -> plan -> (read, schedule, compute) -> journal -> report."""
from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .distributed import DEFAULT_TIMEOUT, Group, Rank, assign, digest, from_env, local_devices, parse_shard, share
from .errors import DistributedError, JournalError, UsageError
from .index import CheckpointIndex, build_index
from .journal import Journal, is_locked, journal_files, read_journals
from .layout import module_name
from .moe import GROUPINGS, ExpertRow, fused_tensor, group_function, moe_rows
from .moe_report import write_moe_outputs
from .plan import Plan, Result, make_plan
from .report import write_outputs, write_yaml
from .devices import default_workers, parse_devices, parse_size
from .scheduler import PoolStats, run_jobs
from .shards import ShardFeed
from .source import resolve, slugify
from .spectrum import DEFAULT_METHOD, METHODS

log = logging.getLogger(__name__)

DEFAULT_OUT = "model_snr_results"
DOWNLOADS_NAME = "streamscan.downloads.json"  # Hub shards this scan downloaded (shards.py)
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
    fp = {
        "model": index.source.model_id,
        "shards": [[s.path.name, s.size, s.header_sha256] for s in index.shards],
        "method": method,
        "include": sorted(include),
        "exclude": sorted(exclude),
    }
    if index.source.hub is not None:  # a resume never mixes revisions, online or offline
        fp["revision"] = index.source.hub.commit
    return fp


def inspect_model(model: str | Path, include: Iterable[str] = (), exclude: Iterable[str] = (), *,
                  revision: str | None = None, offline: bool | None = None) -> tuple[CheckpointIndex, Plan]:
    """Headers only (read remotely for a Hub model's shards not yet downloaded): what a scan would score and skip."""
    index = build_index(resolve(model, revision=revision, offline=offline))
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
    shard: str | None = None,
    distributed: bool | None = None,
    rank_timeout: float = DEFAULT_TIMEOUT,
    revision: str | None = None,
    offline: bool | None = None,
    max_disk: int | str | None = None,
    keep_shards: bool = False,
    moe_grouping: str = "reference",
) -> ScanResult:
    """Score every target matrix of MODEL, resuming the scan in OUT if there is one, and write the outputs
    (for an MoE checkpoint also moe_experts.csv and moe_report.html).

    ``devices``: "auto" (every visible GPU, else the CPU), "cpu", or GPU indices mixed with "cpu" ("0,1,cpu").
    ``max_memory``: RAM for tensors read ahead and CPU work, bytes or "24G" (default: available minus headroom).

    Split scans: under torchrun (or with DISTRIBUTED=True and a launcher's RANK/WORLD_SIZE or Slurm
    variables) each rank scans its share and rank 0 merges and writes the outputs; with SHARD="i/N" this
    process scans shard i of N alone and writes only its journal (``merge`` writes the outputs). In a
    split scan "auto" devices are the rank's own GPUs on its node (GPU g to local rank g mod ranks per node).

    Hub models (MODEL = ``org/name``): ``revision`` (branch, tag or commit), ``offline`` (HF cache only),
    ``max_disk`` (bytes or "100G" of downloaded shards on disk at a time), ``keep_shards`` (never delete them).

    ``moe_grouping``: how the YAML ranks MoE experts: "reference", "pooled" or "per-layer".
    """
    _check_grouping(moe_grouping)
    if method not in METHODS:
        raise UsageError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    percents = _percents(top_percent)
    pool = parse_devices(devices)
    budget = parse_size(max_memory)
    ranks = _rank(shard, distributed)
    include, exclude = tuple(include), tuple(exclude)
    started = time.perf_counter()
    disk_budget = parse_size(max_disk, "--max-disk") if max_disk is not None else None
    index, full = inspect_model(model, include, exclude, revision=revision, offline=offline)
    if index.source.hub is None and (max_disk is not None or keep_shards):
        raise UsageError(f"--max-disk/--keep-shards: only for Hub ids, and {model} is a local path")
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
    experts = moe_rows(((j.name, j.tensor.name, j.shape, j.part) for j in full.jobs), source.config)
    if experts:  # MoE only: a dense model's journal header is unchanged
        header["experts"] = [r.as_list() for r in experts]
    if full.consumed:  # quantized checkpoints only: scale tensors read with their weights
        header["consumed"] = [[s.name, s.reason] for s in full.consumed]
    out_dir = Path(out)
    if ranks is not None:
        if source.hub is not None and (max_disk is not None or keep_shards):
            raise UsageError("--max-disk/--keep-shards: whole scans only; the ranks of a split scan share the HF "
                             "cache and keep the shards they download")
        run = dict(method=method, workers=cpu_workers or ranks.cpu_workers(), progress=progress, started=started,
                   pool=local_devices(devices, pool, ranks), budget=budget,
                   feed=(lambda jobs: ShardFeed(source.hub, jobs, None, True)) if source.hub is not None else None)
        if not ranks.coordinated:
            return _scan_shard(full, header, out_dir, ranks, fresh, **run)
        return _scan_ranks(full, header, out_dir, ranks, fresh, percents, rank_timeout, moe_grouping, **run)
    workers = cpu_workers or default_workers()
    stats = PoolStats()
    with Journal(out_dir, header, fresh=fresh) as journal:
        plan = make_plan(index, include, exclude, journal.done())
        resumed = len(plan.done)
        feed = (ShardFeed(source.hub, plan.jobs, disk_budget, keep_shards, out_dir / DOWNLOADS_NAME)
                if source.hub is not None else None)
        _execute(journal, plan.jobs, method, workers, progress, resumed, full.total, pool=pool, budget=budget,
                 stats=stats, feed=feed)
        results = [journal.results[n] for n in header["targets"] if n in journal.results]
    if feed is not None:
        feed.check()  # a download failed: what was scanned is journaled, a rerun resumes
    summary = _summary(header, results, method, workers, time.perf_counter() - started, resumed)
    summary["run"] = stats.summary() if plan.jobs else None
    summary["placement_notes"] = {r.name: r.note for r in results if r.note}
    if feed is not None:
        summary["hub"] = feed.summary()
    paths = _write(out_dir, slug, header, results, percents, summary, moe_grouping)
    return ScanResult(out_dir, results, summary, paths)


def _execute(journal: Journal, jobs, method: str, workers: int, progress: Progress | None, resumed: int, total: int,
             rank: Rank | None = None, *, pool: list[str], budget: int | None, stats: PoolStats,
             feed: ShardFeed | None = None) -> None:
    """Run JOBS and journal each result as it finishes (tagged with the rank in a split scan).

    With a FEED (a Hub model), jobs come shard by shard as their shards are downloaded, and each journaled
    result lets the feed delete a scanned shard when the disk budget needs room.
    """
    read_bytes = 0
    sizes = {j.name: j.nbytes for j in jobs}
    try:
        results = run_jobs(feed.start() if feed is not None else jobs, method, workers, devices=pool,
                           max_memory=budget, stats=stats)
        for done, result in enumerate(results, start=resumed + 1):
            journal.append(rank.tag(result) if rank else result)
            if feed is not None:
                feed.finished(result.name)
            read_bytes += sizes[result.name]
            if progress:
                progress(result, done, total, read_bytes)
    finally:
        if feed is not None:
            feed.close()


def _percents(top_percent: Iterable[float]) -> list[float]:
    percents = sorted(set(float(p) for p in top_percent))
    if any(not 0 < p <= 100 for p in percents):
        raise UsageError(f"--top-percent {percents}: each must be in (0, 100]")
    return percents


def _rank(shard: str | None, distributed: bool | None) -> Rank | None:
    """This process's place in a split scan: --shard, torchrun's environment, or None (a whole scan)."""
    if shard is not None:
        if distributed:
            raise UsageError("--shard and --distributed exclude each other: use one way to split the scan")
        return parse_shard(shard)
    if distributed is False:
        return None
    rank = from_env(slurm=bool(distributed))
    if rank is None and distributed:
        raise UsageError("--distributed: no RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS) in the environment; "
                         "launch with torchrun or srun, or use --shard i/N")
    return rank


def _rank_header(header: dict, rank: Rank) -> dict:
    return dict(header, rank={"rank": rank.rank, "world": rank.world, "coordinated": rank.coordinated,
                              "host": socket.gethostname(), "pid": os.getpid()})


def _done(results: dict[str, Result]) -> frozenset[str]:
    return frozenset(n for n, r in results.items() if r.status != "error")


def _run_share(header: dict, out_dir: Path, rank: Rank, done: frozenset[str], jobs: list, method: str, workers: int,
               progress: Progress | None, started: float, pool: list[str], budget: int | None,
               feed: Callable[[list], ShardFeed] | None = None) -> ScanResult:
    """Scan this rank's JOBS into its own journal; the result holds the rank's own records."""
    stats = PoolStats()
    shards = feed(jobs) if feed is not None else None  # a Hub model: this rank downloads the shards of its jobs
    with Journal(out_dir, _rank_header(header, rank), rank=rank.rank) as journal:
        show = progress if not (rank.coordinated and rank.rank) else None  # one bar per terminal
        _execute(journal, jobs, method, workers, show, 0, len(jobs), rank, pool=pool, budget=budget, stats=stats,
                 feed=shards)
        own = [journal.results[j.name] for j in jobs if j.name in journal.results]
    if shards is not None:
        shards.check()
    summary = _summary(header, own, method, workers, time.perf_counter() - started, len(done))
    summary.update(matrices=len(jobs), rank=rank.rank, world_size=rank.world, devices=pool,
                   run=stats.summary() if jobs else None, placement_notes={r.name: r.note for r in own if r.note})
    return ScanResult(out_dir, own, summary, [])


def _scan_shard(full: Plan, header: dict, out_dir: Path, rank: Rank, fresh: bool, **run) -> ScanResult:
    """--shard i/N: no coordination; the split is over every target, so shards agree whenever they start."""
    if fresh:
        raise UsageError("--fresh with --shard: shards share --out; empty it once before starting them instead")
    _, found = read_journals(out_dir, header["fingerprint"])
    done = _done(found)
    missing = [j for j in full.jobs if j.name not in done]
    return _run_share(header, out_dir, rank, done, share(rank, missing, full.jobs), **run)


def _scan_ranks(full: Plan, header: dict, out_dir: Path, rank: Rank, fresh: bool, percents: list[float],
                timeout: float, moe_grouping: str = "reference", **run) -> ScanResult:
    """torchrun: rank 0 says what is done, each rank scans its share, rank 0 merges and writes the outputs."""

    def lead() -> list[str]:  # rank 0, before anyone writes: fold what earlier runs left, refuse a busy dir
        with Journal(out_dir, header, fresh=fresh) as journal:
            return sorted(journal.done())

    with Group(rank, timeout) as group:
        done = frozenset(group.start(digest(header["fingerprint"]), lead))
        shares = assign([j for j in full.jobs if j.name not in done], rank.world)
        mine = _run_share(header, out_dir, rank, done, shares[rank.rank], **run)
        late = group.finish()
    if rank.rank != 0:
        return mine
    try:
        res = merge(out_dir, percents, started=run["started"], resumed=len(done), workers=run["workers"],
                    moe_grouping=moe_grouping)
    except JournalError:  # a late rank still holds its journal: write what is done, fold later
        res = merge(out_dir, percents, started=run["started"], resumed=len(done), workers=run["workers"], fold=False,
                    moe_grouping=moe_grouping)
    recorded = {r.name for r in res.results}
    short = {r: sum(j.name not in recorded for j in jobs) for r, jobs in enumerate(shares)}
    short = {r: n for r, n in short.items() if n}
    if short:
        who = ", ".join(f"{group.who(r)}: {n} of {len(shares[r])} matrices missing" for r, n in short.items())
        why = (f"did not finish within {timeout:g} s (--rank-timeout)" if group.waited >= 0.9 * timeout
               else "died or lost contact")
        raise DistributedError(f"{who}; {'it' if len(short) == 1 else 'they'} {why}; the outputs in {out_dir} hold the "
                               f"{len(recorded)} of {len(header['targets'])} done; rerun the same command (any world "
                               "size) to finish")
    if late:
        log.warning("%s, but every matrix is recorded", group.late(late, "the final barrier"))
    return res


def merge(out: str | Path, top_percent: Iterable[float] = (), *, fold: bool = True, started: float | None = None,
          resumed: int = 0, workers: int | None = None, moe_grouping: str = "reference") -> ScanResult:
    """Fold the rank and shard journals in OUT into its single-process journal and write the outputs.

    With FOLD=False the journals are only read (a rank may still write to its own). Outputs are those a
    single-process scan writes, identical for identical results.
    """
    started = time.perf_counter() if started is None else started
    percents = _percents(top_percent)
    out_dir = Path(out)
    header, found = read_journals(out_dir)
    if header is None:
        raise JournalError(f"{out_dir}: no streamscan scan here; run `streamscan run MODEL --out {out_dir}` first")
    header = {k: v for k, v in header.items() if k != "rank"}
    if fold:
        with Journal(out_dir, header) as journal:
            header, found = journal.header, journal.results
    results = [found[n] for n in header["targets"] if n in found]
    labels = {r.worker for r in results}
    ranks = {w.split("/")[0] for w in labels if "/" in w}  # the ranks or shards that computed results
    summary = _summary(header, results, header["fingerprint"]["method"], workers,
                       time.perf_counter() - started, resumed)
    summary["ranks"] = len(ranks) or 1
    summary["placement_notes"] = {r.name: r.note for r in results if r.note}
    paths = _write(out_dir, header["slug"], header, results, percents, summary, moe_grouping)
    return ScanResult(out_dir, results, summary, paths)


def _write(out_dir: Path, slug: str, header: dict, results: list[Result], percents: list[float], summary: dict,
           moe_grouping: str) -> list[Path]:
    """Every output of a scan; for an MoE checkpoint also its counts in the summary and the per-expert report."""
    experts = _expert_rows(header)
    if experts:
        kinds = [r.kind for r in experts]
        summary["moe"] = {"expert_matrices": kinds.count("expert"), "shared_expert_matrices": kinds.count("shared"),
                          "routers": kinds.count("router"), "grouping": moe_grouping}
    paths = write_outputs(out_dir, slug, results, percents, _all_names(header), summary,
                          **_yaml_options(header, moe_grouping))
    if experts:
        paths += write_moe_outputs(out_dir, results, experts, header["model"])
    return paths


def _all_names(header: dict) -> list[str]:
    """Every module name of the checkpoint (expert slices as their fused tensor), for prefix checks."""
    return [fused_tensor(n) or n for n in header["targets"]] + [module_name(n) for n, _ in header["skipped"] + header.get("consumed", [])]


def _check_grouping(moe_grouping: str) -> None:
    if moe_grouping not in GROUPINGS:
        raise UsageError(f"--moe-grouping {moe_grouping}: unknown; choose one of {', '.join(GROUPINGS)}")


def _expert_rows(header: dict) -> list[ExpertRow]:
    return [ExpertRow.from_list(row) for row in header.get("experts", [])]


def _yaml_options(header: dict, moe_grouping: str) -> dict:
    """How the YAML ranks MoE experts, and which selected names are slices of fused tensors."""
    fused = {n: t for n in header["targets"] if (t := fused_tensor(n))}
    return {"group": group_function(moe_grouping, _expert_rows(header)), "fused": fused, "grouping": moe_grouping}


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
        "consumed_tensors": dict(header.get("consumed", [])),
    }


def load_results(out: str | Path) -> tuple[dict, list[Result]]:
    """The journal header and the results recorded so far (a finished or partial scan)."""
    out_dir = Path(out)
    if not journal_files(out_dir):
        raise JournalError(f"{out_dir}: no streamscan scan here; run `streamscan run MODEL --out {out_dir}` first")
    header, by_name = read_journals(out_dir)
    return header, [by_name[n] for n in header["targets"] if n in by_name]


def select(out: str | Path, top_percent: float, moe_grouping: str = "reference") -> Path:
    """Write the YAML for TOP_PERCENT from a finished or partial scan in OUT, without rescanning."""
    _check_grouping(moe_grouping)
    header, results = load_results(out)
    if not 0 < top_percent <= 100:
        raise UsageError(f"--top-percent {top_percent}: must be in (0, 100]")
    return write_yaml(Path(out), header["slug"], results, float(top_percent), _all_names(header), header["model"],
                      **_yaml_options(header, moe_grouping))


def moe_report(out: str | Path) -> list[Path]:
    """Write moe_experts.csv and moe_report.html from the finished or partial scan in OUT, without rescanning."""
    header, results = load_results(out)
    if not header.get("experts"):
        raise UsageError(f"{out}: this scan has no MoE experts; the per-expert report is for Mixture-of-Experts checkpoints")
    return write_moe_outputs(Path(out), results, _expert_rows(header), header["model"])


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
