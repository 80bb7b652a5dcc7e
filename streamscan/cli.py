"""The `streamscan` command. Library errors become one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from . import __version__
from .errors import StreamscanError
from .devices import default_workers, parse_devices
from .distributed import DEFAULT_TIMEOUT
from .moe import GROUPINGS
from .scan import DEFAULT_OUT, inspect_model, merge, moe_report, scan, select, status
from .spectrum import DEFAULT_METHOD, METHODS


MOE_GROUPING_HELP = (
    "How MoE experts are ranked for the YAML. reference: per expert index across layers (the reference's "
    "type, e.g. experts.3.w1); pooled: all experts of a projection in all layers together; per-layer: the "
    "experts of each layer against each other (every MoE layer trains the same share of experts).")
MOE_GROUPING = click.option("--moe-grouping", type=click.Choice(GROUPINGS), default="reference", show_default=True,
                            help=MOE_GROUPING_HELP)


def _fail(message: str, code: int) -> None:
    click.echo(f"streamscan: error: {message}", err=True)
    sys.exit(code)


def friendly(func):
    """Map library errors to one line (exit 2) and unexpected ones to one line (exit 1) unless --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except StreamscanError as err:
            if debug:
                raise
            _fail(str(err), 2)
        except KeyboardInterrupt:
            click.echo("\nstreamscan: interrupted; finished matrices are saved, rerun the same command to resume", err=True)
            sys.stderr.flush()
            os._exit(130)  # do not wait for SVDs still running in worker threads
        except Exception as err:  # noqa: BLE001 - the CLI edge
            if debug:
                raise
            _fail(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamscan")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="streamscan: %(message)s")


@main.command()
@click.argument("model")
@click.option("--out", "-o", default=DEFAULT_OUT, show_default=True, help="Output directory (resumes a scan found there).")
@click.option("--devices", default="auto", show_default=True,
              help="auto (every visible GPU, else CPU), cpu, GPU indices, or a mix: 0,1,cpu.")
@click.option("--cpu-workers", type=click.IntRange(min=1), default=None,
              help="CPU matrices scored in parallel, each on cores/N torch threads [default: physical cores].")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="RAM for tensors read ahead and CPU work, e.g. 16G [default: available RAM minus 25%].")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="gram64: float64 Gram + eigvalsh (exact, fast); svdvals32: the reference's float32 SVD; svdvals64: float64 SVD.")
@click.option("--top-percent", "-p", type=float, multiple=True, help="Write an unfrozen-parameters YAML for this percent (repeatable).")
@click.option("--include", multiple=True, help="Only score modules matching this glob (repeatable), e.g. '*mlp*'.")
@click.option("--exclude", multiple=True, help="Skip modules matching this glob (repeatable).")
@click.option("--fresh", is_flag=True, help="Discard a previous scan in --out instead of resuming it.")
@click.option("--name", default=None, help="Model id for output file names (slug: '/' and '_' -> '-') [default: directory name].")
@MOE_GROUPING
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--distributed/--no-distributed", default=None,
              help="Split the scan over torch.distributed ranks (RANK/WORLD_SIZE, or Slurm's SLURM_PROCID/SLURM_NTASKS) "
                   "[default: on under torchrun].")
@click.option("--shard", default=None, metavar="I/N",
              help="Scan only shard I of N, without torch.distributed; `streamscan merge` writes the outputs.")
@click.option("--rank-timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds rank 0 waits at the end for the other ranks before naming the missing ones.")
@click.option("--revision", default=None, help="Hub models: branch, tag or commit [default: main].")
@click.option("--offline", is_flag=True, default=None, help="Hub models: the HF cache only (as HF_HUB_OFFLINE=1).")
@click.option("--max-disk", default=None, metavar="SIZE",
              help="Hub models: disk for shards this run downloads, e.g. 100G; scanned ones are deleted to make room "
                   "[default: free space in the HF cache minus 5%].")
@click.option("--keep-shards", is_flag=True, help="Hub models: never delete downloaded shards.")
@friendly
def run(model, out, devices, cpu_workers, max_memory, method, top_percent, include, exclude, fresh, name, moe_grouping,
        quiet, distributed, shard, rank_timeout, revision, offline, max_disk, keep_shards):
    """Scan MODEL (a checkpoint directory, a .safetensors file or a Hub id org/name) and write Spectrum outputs to --out."""
    from tqdm import tqdm

    bar = None
    busy: dict[str, float] = {}
    slots = {d: (cpu_workers or default_workers()) if d == "cpu" else 1 for d in parse_devices(devices)}

    def progress(result, done, total, read_bytes):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done - 1, unit="matrix", disable=True if quiet else None, dynamic_ncols=True)
        bar.update(1)
        elapsed = max(bar.format_dict["elapsed"], 1e-9)
        device = "cpu" if result.worker.startswith("cpu") else result.worker
        busy[device] = busy.get(device, 0.0) + result.seconds
        use = " ".join(f"{d} {100 * b / elapsed / slots.get(d, 1):.0f}%" for d, b in busy.items())
        bar.set_postfix_str(f"{read_bytes / elapsed / 1e6:.1f} MB/s, busy: {use}", refresh=False)
        if result.status == "error":
            bar.write(f"streamscan: {result.name}: {result.reason}", file=sys.stderr)

    try:
        res = scan(model, out, method=method, devices=devices, cpu_workers=cpu_workers, max_memory=max_memory,
                   top_percent=top_percent, include=include, exclude=exclude, fresh=fresh, name=name, progress=progress,
                   shard=shard, distributed=distributed, rank_timeout=rank_timeout,
                   revision=revision, offline=offline, max_disk=max_disk, keep_shards=keep_shards,
                   moe_grouping=moe_grouping)
    finally:
        if bar is not None:
            bar.close()
    s = res.summary
    if not quiet and "rank" in s:  # one rank or shard of a split scan: its own share
        who = f"rank {s['rank']}" if shard is None else f"shard {s['rank']}/{s['world_size']}"
        then = "rank 0 writes the outputs" if shard is None else f"`streamscan merge {res.out_dir}` writes the outputs once every shard is done"
        click.echo(f"streamscan: {who}: {s['matrices']} matrices ({s['scored']} scored, {s['no_snr']} without SNR, "
                   f"{s['failed']} failed), {s['seconds']:.1f} s -> {res.out_dir}; {then}")
    elif not quiet:
        click.echo(
            f"streamscan: {s['matrices']} matrices ({s['scored']} scored, {s['no_snr']} without SNR, "
            f"{s['failed']} failed, {s['resumed_from_journal']} from a previous run), {s['skipped']} tensors skipped, "
            + (f"{len(s['consumed_tensors'])} scale tensors read with their weights, " if s.get("consumed_tensors") else "")
            + f"{s['seconds']:.1f} s, peak RSS {s['peak_rss_mb']:.0f} MB -> {res.out_dir}"
        )
    if not quiet and s.get("run"):
        r = s["run"]
        per = ", ".join(f"{d}: {v['jobs']} jobs, {v['busy_seconds']:.1f} s busy ({100 * v['utilisation']:.0f}%)"
                        + (f", {v['oom_retries']} OOM retries" if v["oom_retries"] else "")
                        for d, v in r["devices"].items())
        click.echo(f"streamscan: {per}; overlap {100 * r['overlap']:.0f}% (busy / wall)")
        for name_, note in s["placement_notes"].items():
            click.echo(f"streamscan: {name_}: {note}")
    if not quiet and s.get("hub"):
        h = s["hub"]
        click.echo(f"streamscan: {h['repo']}@{h['commit'][:12]}: {len(h['shards_scanned_from_cache'])} shard(s) from the "
                   f"HF cache, {h['shards_downloaded']} downloaded ({h['downloaded_bytes'] / 2**30:.2f} GiB in "
                   f"{h['download_seconds']:.1f} s, scan waited {h['waited_for_download_seconds']:.1f} s), "
                   f"{len(h['deleted_after_scan'])} deleted after scanning, disk peak {h['peak_disk_bytes'] / 2**30:.2f} GiB")
    if not quiet:
        for path in res.paths:
            if path.name.startswith("moe_report"):
                click.echo(f"streamscan: per-expert report: {path}")
    if s["failed"]:
        _fail(f"{s['failed']} matrices failed (see streamscan_summary.json); rerun the same command to retry them", 1)


@main.command("status")
@click.argument("out", default=DEFAULT_OUT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def status_cmd(out, as_json):
    """Say how far the scan in OUT got."""
    st = status(out)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    state = "running" if st["running"] else ("complete" if st["remaining"] == 0 else "stopped")
    click.echo(
        f"{st['model']} ({st['method']}): {st['done']}/{st['total']} matrices done, {st['remaining']} remaining, "
        f"{st['failed']} failed, {st['no_snr']} without SNR; {state}"
    )


@main.command("merge")
@click.argument("out", default=DEFAULT_OUT)
@click.option("--top-percent", "-p", type=float, multiple=True, help="Also write the YAML for this percent (repeatable).")
@MOE_GROUPING
@friendly
def merge_cmd(out, top_percent, moe_grouping):
    """Fold the rank/shard journals in OUT into one and write the outputs (after `run --shard i/N` runs)."""
    res = merge(out, top_percent, moe_grouping=moe_grouping)
    s = res.summary
    click.echo(f"streamscan: merged {len(res.results)} of {s['matrices']} matrices from {s['ranks']} rank(s) "
               f"({s['scored']} scored, {s['no_snr']} without SNR, {s['failed']} failed) -> {res.out_dir}")
    missing = s["matrices"] - s["scored"] - s["no_snr"]
    if missing:
        _fail(f"{missing} matrices are not done yet; rerun the missing shards (or `streamscan run` on {out}) and merge again", 1)


@main.command("select")
@click.argument("out", default=DEFAULT_OUT)
@click.option("--top-percent", "-p", type=float, multiple=True, required=True, help="Percent per type (repeatable).")
@MOE_GROUPING
@friendly
def select_cmd(out, top_percent, moe_grouping):
    """Write unfrozen-parameters YAMLs from the (finished or partial) scan in OUT, without rescanning."""
    for p in top_percent:
        click.echo(select(out, p, moe_grouping=moe_grouping))


@main.command("report")
@click.argument("out", default=DEFAULT_OUT)
@friendly
def report_cmd(out):
    """Write the per-expert MoE report (moe_experts.csv, moe_report.html) from the scan in OUT, without rescanning."""
    for path in moe_report(out):
        click.echo(path)


@main.command("inspect")
@click.argument("model")
@click.option("--include", multiple=True, help="Only modules matching this glob.")
@click.option("--exclude", multiple=True, help="Skip modules matching this glob.")
@click.option("--revision", default=None, help="Hub models: branch, tag or commit [default: main].")
@click.option("--offline", is_flag=True, default=None, help="Hub models: the HF cache only.")
@click.option("--cpu-workers", type=click.IntRange(min=1), default=None, help="For the time estimate [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="The plan's totals as JSON.")
@friendly
def inspect_cmd(model, include, exclude, revision, offline, cpu_workers, as_json):
    """List what a scan of MODEL would score and skip, with bytes and a time estimate (headers only, no download)."""
    from .overview import overview

    index, plan = inspect_model(model, include, exclude, revision=revision, offline=offline)
    ov = overview(index, plan, cpu_workers or default_workers())
    if as_json:
        click.echo(json.dumps(ov, indent=2))
        return
    jobs = sorted(plan.jobs, key=lambda j: j.name)
    for j in jobs:
        click.echo(f"score  {j.name:60s} {'x'.join(map(str, j.shape)):>14s} {j.tensor.dtype}")
    for s in plan.skipped:
        click.echo(f"skip   {s.name:60s} {s.reason}")
    for s in plan.consumed:
        click.echo(f"scale  {s.name:60s} {s.reason}")
    for key, t in ov["types"].items():
        experts = f", {t['experts']} experts" if t["experts"] else ""
        click.echo(f"type   {key:60s} {t['matrices']:5d} matrices{experts}, {' '.join(t['shapes'])} {' '.join(t['dtypes'])}")
    gib = 2**30
    used = f", {len(plan.consumed)} scale tensors read with their weights" if plan.consumed else ""
    where = f" at commit {ov['commit']}" if ov["commit"] else ""
    click.echo(f"{len(jobs)} matrices to score, {len(plan.skipped)} tensors skipped{used}, {len(index.shards)} shard(s){where}, "
               f"{index.total_bytes / gib:.2f} GiB; {ov['bytes_to_read'] / gib:.2f} GiB to read, "
               f"{ov['bytes_to_download'] / gib:.2f} GiB to download ({len(ov['shards_to_download'])} shard(s))")
    eta = ", ".join(f"{d} ~{_duration(sec)}" for d, sec in ov["eta_seconds"].items())
    click.echo(f"estimated compute ({ov['flops'] / 1e12:.2f} TFLOP): {eta}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
