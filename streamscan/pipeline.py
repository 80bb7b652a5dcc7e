"""pipeline: a scan from start to outputs: resolve -> index -> plan -> (read, schedule, compute) -> journal -> outputs.

``scan`` runs a whole scan, one rank's or one shard's share of a split one; ``merge_journals`` folds rank and shard
journals and writes the outputs. Options are a ``ScanOptions``; the journal header a ``ScanHeader``; the
summary a ``ScanSummary`` (records.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from streamscan._version import __version__
from streamscan.checkpoint.index import CheckpointIndex, build_index
from streamscan.checkpoint.shards import ShardFeed
from streamscan.checkpoint.source import resolve, slugify
from streamscan.distributed import Group, Rank, assign, digest, from_env, local_devices, parse_shard, share
from streamscan.errors import DistributedError, JournalError, UsageError
from streamscan.layout import TOWERS
from streamscan.planning.experts import GROUPINGS, moe_rows
from streamscan.planning.plan import Plan, make_plan
from streamscan.records import (
    DEFAULT_OUT,
    Fingerprint,
    HubNetwork,
    RankInfo,
    Result,
    ScanHeader,
    ScanOptions,
    ScanSummary,
)
from streamscan.results.files import os_error, prepare_dir
from streamscan.results.journal import (
    COMMIT_RECORDS,
    COMMIT_SECONDS,
    Journal,
    journal_header,
    no_scan,
    read_journals,
)
from streamscan.results.outputs import check_names
from streamscan.results.scan_outputs import in_order, placement_notes, summarize, write_scan_outputs
from streamscan.results.spectra import SpectraWriter, clear, missing

if TYPE_CHECKING:
    from streamscan.compute.scheduler import PoolStats

# The compute layer (torch) is imported inside the functions that scan: `merge_journals` never loads torch.

log = logging.getLogger(__name__)

DOWNLOADS_NAME = "streamscan.downloads.json"  # Hub shards this scan downloaded (shards.py)
Progress = Callable[[Result, int, int, int], None]  # (result, done, total, bytes read this run)


@dataclass
class ScanResult:
    out_dir: Path
    results: list[Result]
    summary: ScanSummary
    paths: list[Path] = field(default_factory=list)

    @property
    def snr(self) -> dict[str, float | None]:
        return {r.name: r.snr for r in self.results}


def inspect_model(
    model: str | Path,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    *,
    revision: str | None = None,
    offline: bool | None = None,
    network: HubNetwork | None = None,
    tower: str | None = None,
) -> tuple[CheckpointIndex, Plan]:
    """Headers only (read remotely for a Hub model's shards not yet downloaded): what a scan would score and skip.
    NETWORK: the Hub requests' timeout and retries (a ``HubNetwork``; its defaults when None); TOWER: one tower
    of a multimodal model only (``layout.tower``)."""
    check_tower(tower)
    index = build_index(resolve(model, revision=revision, offline=offline, network=network))
    return index, make_plan(index, tuple(include), tuple(exclude), towers=tower)


def check_grouping(moe_grouping: str) -> None:
    if moe_grouping not in GROUPINGS:
        raise UsageError(f"--moe-grouping {moe_grouping}: unknown; choose one of {', '.join(GROUPINGS)}")


def check_tower(tower: str | None) -> None:
    if tower is not None and tower not in TOWERS:
        raise UsageError(f"--tower {tower}: unknown; choose one of {', '.join(TOWERS)}")


def fingerprint(
    index: CheckpointIndex, method: str, include: Iterable[str], exclude: Iterable[str], tower: str | None = None
) -> Fingerprint:
    """What must match for a resume: the checkpoint's files and headers, the method and the target options."""
    return Fingerprint(
        model=index.source.model_id,
        shards=tuple((s.path.name, s.size, s.header_sha256) for s in index.shards),
        method=method,
        include=tuple(sorted(include)),
        exclude=tuple(sorted(exclude)),
        revision=index.source.hub.commit if index.source.hub is not None else None,
        tower=tower,
    )


def scan_header(index: CheckpointIndex, full: Plan, opts: ScanOptions) -> ScanHeader:
    """The journal header of a scan of INDEX with OPTS (FULL: its plan with nothing done)."""
    source = index.source
    return ScanHeader(
        version=__version__,
        fingerprint=fingerprint(index, opts.method, opts.include, opts.exclude, opts.tower),
        model=opts.name or source.model_id,
        slug=slugify(opts.name) if opts.name else source.slug,
        targets=tuple(sorted(j.name for j in full.jobs)),
        skipped=tuple((s.name, s.reason) for s in full.skipped),
        experts=tuple(moe_rows(((j.name, j.tensor.name, j.shape, j.part) for j in full.jobs), source.config)),
        consumed=tuple((s.name, s.reason) for s in full.consumed),
    )


def scan(
    model: str | Path,
    out: str | Path = DEFAULT_OUT,
    options: ScanOptions | None = None,
    *,
    progress: Progress | None = None,
    **kwargs,
) -> ScanResult:
    """Score every target matrix of MODEL, resuming the scan in OUT if there is one, and write the outputs
    (for an MoE checkpoint also moe_experts.csv and moe_report.html).

    OPTIONS is a ScanOptions, or its fields given as keywords (``scan(m, out, top_percent=[25], devices="cpu")``):
    ``method``, ``devices`` ("auto": every visible GPU, else the CPU; "cpu"; "0,1,cpu"), ``cpu_workers``,
    ``max_memory`` (bytes or "24G"), ``top_percent``, ``include``/``exclude`` (globs), ``fresh``, ``name``
    (the model id of the output names), ``moe_grouping`` ("reference", "pooled" or "per-layer").

    Split scans: under torchrun (or with ``distributed=True`` and a launcher's RANK/WORLD_SIZE or Slurm
    variables) each rank scans its share and rank 0 merges and writes the outputs; with ``shard="i/N"`` this
    process scans shard i of N alone and writes only its journal (``merge`` writes the outputs). In a
    split scan "auto" devices are the rank's own GPUs on its node (GPU g to local rank g mod ranks per node).

    Hub models (MODEL = ``org/name``): ``revision`` (branch, tag or commit), ``offline`` (HF cache only),
    ``max_disk`` (bytes or "100G" of downloaded shards on disk at a time), ``keep_shards`` (never delete them).
    """
    from streamscan.compute.devices import default_workers, parse_devices, parse_size
    from streamscan.compute.scheduler import PoolStats
    from streamscan.compute.spectrum import METHODS

    opts = replace(options, **kwargs) if options is not None else ScanOptions.of(**kwargs)
    check_grouping(opts.moe_grouping)
    if opts.method not in METHODS:
        raise UsageError(f"--method {opts.method}: unknown; choose one of {', '.join(METHODS)}")
    percents = _percents(opts.top_percent)
    pool = parse_devices(opts.devices)
    budget = parse_size(opts.max_memory)
    ranks = _rank(opts.shard, opts.distributed)
    started = time.perf_counter()
    disk_budget = parse_size(opts.max_disk, "--max-disk") if opts.max_disk is not None else None
    out_dir = prepare_dir(out)  # a bad --out is refused before any work, in one line
    index, full = inspect_model(
        model,
        opts.include,
        opts.exclude,
        revision=opts.revision,
        offline=opts.offline,
        network=opts.network,
        tower=opts.tower,
    )
    hub_only = opts.max_disk is not None or opts.keep_shards
    if index.source.hub is None and hub_only:
        raise UsageError(f"--max-disk/--keep-shards: only for Hub ids, and {model} is a local path")
    if not full.jobs:
        quant = [s for s in full.skipped if any(w in s.reason for w in ("FP8", "scale", "MXFP4", "dequantiz"))]
        if quant:  # the real cause, e.g. FP8 scales that do not tile the weight
            first = quant[0]
            more = f" ({len(quant)} such)" if len(quant) > 1 else ""
            raise UsageError(f"{model}: no weight matrix can be scored: {first.name}: {first.reason}{more}")
        raise UsageError(f"{model}: no 2-D weight matrices to score (check --include/--exclude)")
    source = index.source
    header = scan_header(index, full, opts)
    check_names(out_dir, header.slug, percents)
    if ranks is not None:
        if source.hub is not None and hub_only:
            raise UsageError(
                "--max-disk/--keep-shards: whole scans only; the ranks of a split scan share the HF "
                "cache and keep the shards they download"
            )
        run = dict(
            method=opts.method,
            workers=opts.cpu_workers or ranks.cpu_workers(),
            progress=progress,
            started=started,
            pool=local_devices(opts.devices, pool, ranks),
            budget=budget,
            feed=(lambda jobs: ShardFeed(source.hub, jobs, None, True)) if source.hub is not None else None,
            spectra=opts.spectra,
            commit=(opts.commit_records, opts.commit_seconds),
            tuning=_tuning(opts),
        )
        if not ranks.coordinated:
            return _scan_shard(full, header, out_dir, ranks, opts.fresh, **run)
        return _scan_ranks(
            full, header, out_dir, ranks, opts.fresh, percents, opts.rank_timeout, opts.moe_grouping, **run
        )
    workers = opts.cpu_workers or default_workers()
    stats = PoolStats()
    commit = dict(commit_records=opts.commit_records, commit_seconds=opts.commit_seconds)
    with Journal(out_dir, header, fresh=opts.fresh, **commit) as journal:  # nothing touches OUT before its lock
        if opts.fresh:
            clear(out_dir)
        if opts.name is None:  # a rerun without --name keeps the names of the scan it resumes (its output files)
            header = replace(header, model=journal.header.model, slug=journal.header.slug)
        plan = full.without(_redo_missing(out_dir, journal.results, opts.spectra))
        resumed = len(plan.done)
        feed = (
            ShardFeed(source.hub, plan.jobs, disk_budget, opts.keep_shards, out_dir / DOWNLOADS_NAME)
            if source.hub is not None
            else None
        )
        _execute(
            journal,
            plan.jobs,
            opts.method,
            workers,
            progress,
            resumed,
            full.total,
            pool=pool,
            budget=budget,
            stats=stats,
            feed=feed,
            spectra=SpectraWriter(out_dir) if opts.spectra else None,
            tuning=_tuning(opts),
        )
        results = in_order(header, journal.results)
    if feed is not None:
        feed.check()  # a download failed: what was scanned is journaled, a rerun resumes
    extra: dict = {"run": stats.summary() if plan.jobs else None, "placement_notes": placement_notes(results)}
    if feed is not None:
        extra["hub"] = feed.summary()
    summary = summarize(header, results, opts.method, workers, time.perf_counter() - started, resumed, **extra)
    if not plan.jobs:  # nothing left to do: the summary of the run that did the work is kept
        summary = _kept_summary(out_dir, summary)
    summary, paths = write_scan_outputs(
        out_dir, header, results, percents, summary, opts.moe_grouping, checkpoint=index.source.root
    )
    return ScanResult(out_dir, results, summary, paths)


KEPT_ON_RERUN = ("seconds", "compute_seconds", "peak_rss_mb", "cpu_workers", "resumed_from_journal", "run", "hub")


def _kept_summary(out_dir: Path, summary: ScanSummary) -> ScanSummary:
    """SUMMARY with the timings of the streamscan_summary.json already in OUT_DIR when that one counts the same
    results (a rerun of a finished scan that computed nothing)."""
    try:
        with open(out_dir / "streamscan_summary.json", "rb") as fh:
            before = json.load(fh)
    except (OSError, ValueError):
        return summary
    same = ("model", "method", "matrices", "scored", "no_snr", "failed")
    if not isinstance(before, dict) or any(before.get(k) != summary.get(k) for k in same):
        return summary
    return summary.replace(**{k: before[k] for k in KEPT_ON_RERUN if k in before})


def _tuning(opts: ScanOptions) -> dict:
    """The scheduler's settings among OPTIONS (run_jobs' keywords)."""
    if opts.solver is not None and opts.solver not in ("gram64", "gram64-host-eig"):
        raise UsageError(f"solver {opts.solver!r}: unknown; choose gram64 or gram64-host-eig")
    return dict(solver_path=opts.solver, pieces_above=opts.pieces_above, threads_per_job=opts.threads_per_job)


def _execute(
    journal: Journal,
    jobs,
    method: str,
    workers: int,
    progress: Progress | None,
    resumed: int,
    total: int,
    rank: Rank | None = None,
    *,
    pool: list[str],
    budget: int | None,
    stats: PoolStats,
    feed: ShardFeed | None = None,
    spectra: SpectraWriter | None = None,
    tuning: dict | None = None,
) -> None:
    """Run JOBS and journal each result as it finishes (tagged with the rank in a split scan).

    With SPECTRA, each scored matrix's singular values are buffered and written as a segment beside the
    journal just before each journal commit (so a committed record always has its spectrum).

    With a FEED (a Hub model), jobs come shard by shard as their shards are downloaded, and each journaled
    result lets the feed delete a scanned shard when the disk budget needs room.
    """
    from streamscan.compute.scheduler import run_jobs

    read_bytes = 0
    sizes = {j.name: j.nbytes for j in jobs}
    if spectra is not None:
        journal.before_commit = spectra.flush  # a committed record's spectrum is on disk before it
    try:
        results = run_jobs(
            feed.start() if feed is not None else jobs,
            method,
            workers,
            devices=pool,
            max_memory=budget,
            stats=stats,
            keep=spectra.add if spectra is not None else None,
            **(tuning or {}),
        )
        for done, result in enumerate(results, start=resumed + 1):
            try:
                journal.append(rank.tag(result) if rank else result)
            except OSError as err:  # disk full: every record before this one is durable
                raise os_error(journal.path, err) from None
            if feed is not None:
                feed.finished(result.name)
            read_bytes += sizes[result.name]
            if progress:
                progress(result, done, total, read_bytes)
    finally:
        if feed is not None:
            feed.close()
        if spectra is not None:
            spectra.close()


def _redo_missing(out_dir: Path, results: dict[str, Result], keep_spectra: bool, locked: bool = True) -> frozenset[str]:
    """The names done, less those scored whose kept spectrum a kill lost or that is bad (rescanned when
    spectra are kept). LOCKED: the caller holds OUT's lock (an unreadable segment is set aside)."""
    done = _done(results)
    if not keep_spectra:
        return done
    scored = {n: r.shape for n, r in results.items() if r.status == "ok"}
    lost = missing(out_dir, done, scored, set_aside=locked)
    if lost:
        log.info("%s: %d scored matrices have no good stored spectrum; rescanning them", out_dir, len(lost))
    return done - lost


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
        raise UsageError(
            "--distributed: no RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS) in the environment; "
            "launch with torchrun or srun, or use --shard i/N"
        )
    return rank


def _rank_header(header: ScanHeader, rank: Rank) -> ScanHeader:
    return replace(header, rank=RankInfo(rank.rank, rank.world, rank.coordinated, socket.gethostname(), os.getpid()))


def _done(results: dict[str, Result]) -> frozenset[str]:
    return frozenset(n for n, r in results.items() if r.status != "error")


def _run_share(
    header: ScanHeader,
    out_dir: Path,
    rank: Rank,
    done: frozenset[str],
    jobs: list,
    method: str,
    workers: int,
    progress: Progress | None,
    started: float,
    pool: list[str],
    budget: int | None,
    feed: Callable[[list], ShardFeed] | None = None,
    spectra: bool = True,
    commit: tuple[int, float] = (COMMIT_RECORDS, COMMIT_SECONDS),
    tuning: dict | None = None,
) -> ScanResult:
    """Scan this rank's JOBS into its own journal; the result holds the rank's own records. COMMIT: the
    journal's (commit_records, commit_seconds)."""
    from streamscan.compute.scheduler import PoolStats

    stats = PoolStats()
    shards = feed(jobs) if feed is not None else None  # a Hub model: this rank downloads the shards of its jobs
    records, seconds = commit
    with Journal(
        out_dir, _rank_header(header, rank), rank=rank.rank, commit_records=records, commit_seconds=seconds
    ) as journal:
        show = progress if not (rank.coordinated and rank.rank) else None  # one bar per terminal
        _execute(
            journal,
            jobs,
            method,
            workers,
            show,
            0,
            len(jobs),
            rank,
            pool=pool,
            budget=budget,
            stats=stats,
            feed=shards,
            spectra=SpectraWriter(out_dir, rank=rank.rank) if spectra else None,
            tuning=tuning,
        )
        own = [journal.results[j.name] for j in jobs if j.name in journal.results]
    if shards is not None:
        shards.check()
    summary = summarize(header, own, method, workers, time.perf_counter() - started, len(done)).replace(
        matrices=len(jobs),
        rank=rank.rank,
        world_size=rank.world,
        devices=pool,
        run=stats.summary() if jobs else None,
        placement_notes=placement_notes(own),
    )
    return ScanResult(out_dir, own, summary, [])


def _scan_shard(full: Plan, header: ScanHeader, out_dir: Path, rank: Rank, fresh: bool, **run) -> ScanResult:
    """--shard i/N: no coordination; the split is over every target, so shards agree whenever they start."""
    if fresh:
        raise UsageError("--fresh with --shard: shards share --out; empty it once before starting them instead")
    _, found = read_journals(out_dir, header.fingerprint)
    done = _redo_missing(out_dir, found, run.get("spectra", True), locked=False)
    missing = [j for j in full.jobs if j.name not in done]
    return _run_share(header, out_dir, rank, done, share(rank, missing, full.jobs), **run)


def _scan_ranks(
    full: Plan,
    header: ScanHeader,
    out_dir: Path,
    rank: Rank,
    fresh: bool,
    percents: list[float],
    timeout: float,
    moe_grouping: str = "reference",
    **run,
) -> ScanResult:
    """torchrun: rank 0 says what is done, each rank scans its share, rank 0 merges and writes the outputs."""

    def lead() -> list[str]:  # rank 0, before anyone writes: fold what earlier runs left, refuse a busy dir
        with Journal(out_dir, header, fresh=fresh) as journal:
            if fresh:
                clear(out_dir)  # under the lock, before any rank writes
            return sorted(_redo_missing(out_dir, journal.results, run.get("spectra", True)))

    with Group(rank, timeout) as group:
        done = frozenset(group.start(digest(header.fingerprint.to_dict()), lead))
        shares = assign([j for j in full.jobs if j.name not in done], rank.world)
        mine = _run_share(header, out_dir, rank, done, shares[rank.rank], **run)
        late = group.finish()
    if rank.rank != 0:
        return mine
    merged = functools.partial(
        merge_journals, out_dir, percents, started=run["started"], resumed=len(done), workers=run["workers"],
        moe_grouping=moe_grouping,
    )  # fmt: skip
    try:
        res = merged()
    except JournalError:  # a late rank still holds its journal: write what is done, fold later
        res = merged(fold=False)
    recorded = {r.name for r in res.results}
    short = {r: sum(j.name not in recorded for j in jobs) for r, jobs in enumerate(shares)}
    short = {r: n for r, n in short.items() if n}
    if short:
        who = ", ".join(f"{group.who(r)}: {n} of {len(shares[r])} matrices missing" for r, n in short.items())
        why = (
            f"did not finish within {timeout:g} s (--rank-timeout)"
            if group.waited >= 0.9 * timeout
            else "died or lost contact"
        )
        raise DistributedError(
            f"{who}; {'it' if len(short) == 1 else 'they'} {why}; the outputs in {out_dir} hold the "
            f"{len(recorded)} of {len(header.targets)} done; rerun the same command (any world "
            "size) to finish"
        )
    if late:
        log.warning("%s, but every matrix is recorded", group.late(late, "the final barrier"))
    return res


def merge_journals(
    out: str | Path,
    top_percent: Iterable[float] = (),
    *,
    fold: bool = True,
    started: float | None = None,
    resumed: int = 0,
    workers: int | None = None,
    moe_grouping: str = "reference",
) -> ScanResult:
    """``streamscan.merge`` (api.py), with what a split scan's rank 0 passes on: FOLD, the scan's STARTED time,
    RESUMED records and WORKERS for the summary.

    With FOLD=False the journals are only read (a rank may still write to its own). Outputs are those a
    single-process scan writes, identical for identical results.
    """
    started = time.perf_counter() if started is None else started
    percents = _percents(top_percent)
    out_dir = Path(out)
    if fold:  # the journal reads (and checks) every record once as it folds the ranks in
        header = journal_header(out_dir)
        if header is None:
            raise no_scan(out_dir)
        with Journal(out_dir, header.without_rank()) as journal:
            header, found = journal.header, journal.results
    else:
        header, found = read_journals(out_dir)
        if header is None:
            raise no_scan(out_dir)
    header = header.without_rank()
    results = in_order(header, found)
    labels = {r.worker for r in results}
    ranks = {w.split("/")[0] for w in labels if "/" in w}  # the ranks or shards that computed results
    summary = summarize(
        header,
        results,
        header.method,
        workers,
        time.perf_counter() - started,
        resumed,
        ranks=len(ranks) or 1,
        placement_notes=placement_notes(results),
    )
    summary, paths = write_scan_outputs(out_dir, header, results, percents, summary, moe_grouping)
    return ScanResult(out_dir, results, summary, paths)
