"""commands: `streamscan run | inspect | status | select | merge | report`. Library errors become one line on
stderr and exit code 2; the library itself is imported only when a command runs."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
import time

import click

from streamscan._version import __version__
from streamscan.cli import render
from streamscan.cli.options import (
    CPU_WORKERS,
    EXCLUDE,
    INCLUDE,
    JSON,
    METHOD,
    MODEL_SELECTION,
    MOE_GROUPING,
    OFFLINE,
    RANK_TIMEOUT,
    REVISION,
    TOP_PERCENT,
    fail,
    friendly,
    on_signal,
    scan_dir,
)
from streamscan.records import DEFAULT_OUT

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="streamscan")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time.

    \b
    Example:
      streamscan run HuggingFaceTB/SmolLM2-135M --out scan -p 25
      streamscan select --out scan -p 50
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="streamscan: %(message)s")
    if threading.current_thread() is threading.main_thread():  # Ctrl-C and SIGTERM: one line, exit 130/143
        ctx = click.get_current_context()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, on_signal)
            ctx.call_on_close(functools.partial(signal.signal, signum, previous))


@main.command()
@click.argument("model")
@click.option(
    "--out",
    "-o",
    default=DEFAULT_OUT,
    show_default=True,
    metavar="DIR",
    help="Scan directory (journal and outputs); a scan found there is resumed.",
)
@click.option(
    "--devices",
    default="auto",
    show_default=True,
    help="auto (every visible GPU, else CPU), cpu, GPU indices, or a mix: 0,1,cpu.",
)
@CPU_WORKERS
@click.option(
    "--max-memory",
    default=None,
    metavar="SIZE",
    help="RAM for tensors read ahead and CPU work, e.g. 16G [default: available RAM minus 25%].",
)
@METHOD
@TOP_PERCENT
@INCLUDE
@EXCLUDE
@click.option("--fresh", is_flag=True, help="Discard a previous scan in --out instead of resuming it.")
@click.option(
    "--name", default=None, help="Model id for output file names (slug: '/' and '_' -> '-') [default: directory name]."
)
@MOE_GROUPING
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option(
    "--distributed/--no-distributed",
    default=None,
    help="Split the scan over torch.distributed ranks (RANK/WORLD_SIZE, or Slurm's SLURM_PROCID/SLURM_NTASKS) "
    "[default: on under torchrun].",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Scan only shard I of N, without torch.distributed; `streamscan merge` writes the outputs.",
)
@RANK_TIMEOUT
@REVISION
@OFFLINE
@click.option(
    "--max-disk",
    default=None,
    metavar="SIZE",
    help="Hub models: disk for shards this run downloads, e.g. 100G; scanned ones are deleted to make room "
    "[default: free space in the HF cache minus 5%].",
)
@click.option("--keep-shards", is_flag=True, help="Hub models: never delete downloaded shards.")
@click.option(
    "--spectra/--no-spectra",
    default=True,
    show_default=True,
    help="Keep every matrix's singular values in --out/spectra (for `streamscan metrics` and reports).",
)
@friendly
def run(model, out, quiet, **options):
    """Scan MODEL (a checkpoint directory, a .safetensors/.gguf/.bin file or a Hub id org/name) and write
    the Spectrum outputs to --out.

    \b
    Example:
      streamscan run ./Llama-3-8B --out scan -p 25 -p 50
      torchrun --nproc-per-node 8 -m streamscan run org/name --out scan
    """
    from tqdm import tqdm

    from streamscan.compute.devices import default_workers, parse_devices
    from streamscan.pipeline import scan
    from streamscan.records import ScanOptions

    opts = ScanOptions.of(**options)
    bar = None
    busy: dict[str, float] = {}
    slots = {d: (opts.cpu_workers or default_workers()) if d == "cpu" else 1 for d in parse_devices(opts.devices)}

    shown = [0.0]  # when the postfix was last rebuilt

    def progress(result, done, total, read_bytes):
        # at 70k matrices a result comes every ~0.1 ms: the bar redraws and its postfix is rebuilt at most
        # twice a second, and the rate (matrices/s) is smoothed over many results so the ETA stays steady
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total,
                initial=done - 1,
                unit="matrix",
                disable=True if quiet else None,
                dynamic_ncols=True,
                mininterval=0.5,
                smoothing=0.05,
            )
        device = "cpu" if result.worker.startswith("cpu") else result.worker
        busy[device] = busy.get(device, 0.0) + result.seconds
        now = time.monotonic()
        if now - shown[0] >= 0.5 or done == total:
            shown[0] = now
            elapsed = max(bar.format_dict["elapsed"], 1e-9)
            use = " ".join(f"{d} {100 * b / elapsed / slots.get(d, 1):.0f}%" for d, b in busy.items())
            bar.set_postfix_str(f"{read_bytes / elapsed / 1e9:.2f} GB/s, busy: {use}", refresh=False)
        bar.update(1)
        if result.status == "error":
            bar.write(f"streamscan: {result.name}: {result.reason}", file=sys.stderr)

    try:
        res = scan(model, out, opts, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        for line in render.run_lines(res.summary, res.out_dir, res.paths, opts.shard):
            click.echo(line)
    if res.summary.failed:
        fail(
            f"{res.summary.failed} matrices failed (see streamscan_summary.json); rerun the same command to retry them",
            1,
        )


@main.command("inspect")
@click.argument("model")
@MODEL_SELECTION
@CPU_WORKERS
@click.option("--json", "as_json", is_flag=True, help="The plan's totals as JSON.")
@friendly
def inspect_cmd(model, include, exclude, revision, offline, cpu_workers, as_json):
    """List what a scan of MODEL would score and skip, with bytes and a time estimate (headers only, no download).

    \b
    Example:
      streamscan inspect deepseek-ai/DeepSeek-V3 --include '*experts*'
    """
    from streamscan.api import inspect_model
    from streamscan.compute.devices import default_workers
    from streamscan.results.overview import overview

    index, plan = inspect_model(model, include, exclude, revision=revision, offline=offline)
    ov = overview(index, plan, cpu_workers or default_workers())
    if as_json:
        click.echo(json.dumps(ov, indent=2))
        return
    lines = list(render.inspect_lines(index, plan, ov))
    if lines:  # one write: 70k lines echoed one by one cost a second
        click.echo("\n".join(lines))


@main.command("status")
@scan_dir
@JSON
@friendly
def status_cmd(out, as_json):
    """Say how far the scan in --out got (works while it runs).

    \b
    Example:
      streamscan status --out scan --json
    """
    from streamscan.api import status

    st = status(out)
    click.echo(json.dumps(st, indent=2) if as_json else render.status_line(st))


DEST = click.option(
    "--dest",
    default=None,
    metavar="DIR",
    help="Write the files here [default: the scan directory, or the results JSON's directory].",
)


@main.command("select")
@scan_dir
@click.option("--top-percent", "-p", type=float, multiple=True, required=True, help="Percent per type (repeatable).")
@MOE_GROUPING
@DEST
@friendly
def select_cmd(out, top_percent, moe_grouping, dest):
    """Write unfrozen-parameters YAMLs from the (finished or partial) scan in --out, or from a published
    Spectrum results JSON given in its place, without rescanning.

    \b
    Example:
      streamscan select --out scan -p 25 -p 50
      streamscan select snr_results_mistralai-Mixtral-8x22B-v0.1.json -p 25 --dest sel
    """
    from streamscan.api import select

    for p in top_percent:
        click.echo(select(out, p, moe_grouping=moe_grouping, dest=dest))


@main.command("metrics")
@scan_dir
@DEST
@click.option("--workers", type=int, default=None, help="Processes computing metrics [default: CPU count, at most 8].")
@friendly
def metrics_cmd(out, dest, workers):
    """Write per-matrix metrics (WeightWatcher's alpha, alpha_weighted, stable rank, spectral norms, MP soft
    rank, entropy, effective rank, SNR) and per-type summaries from the spectra the scan in --out kept.

    \b
    Example:
      streamscan metrics --out scan
    """
    from streamscan.api import metrics

    for path in metrics(out, dest=dest, workers=workers):
        click.echo(path)


@main.command("merge")
@scan_dir
@click.option(
    "--top-percent", "-p", type=float, multiple=True, help="Also write the YAML for this percent (repeatable)."
)
@MOE_GROUPING
@friendly
def merge_cmd(out, top_percent, moe_grouping):
    """Fold the rank/shard journals in --out into one and write the outputs (after `run --shard i/N` runs).

    \b
    Example:
      streamscan run MODEL --out scan --shard 0/2   # on one machine
      streamscan run MODEL --out scan --shard 1/2   # on another, same shared --out
      streamscan merge --out scan -p 25
    """
    from streamscan.pipeline import merge

    res = merge(out, top_percent, moe_grouping=moe_grouping)
    s = res.summary
    click.echo(render.merge_line(s, len(res.results), res.out_dir))
    missing = s.matrices - s.scored - s.no_snr
    if missing:
        fail(
            f"{missing} matrices are not done yet; rerun the missing shards (or `streamscan run` on {out}) and merge again",
            1,
        )


@main.command("report")
@scan_dir
@DEST
@click.option("--top-percent", "-p", type=float, default=25.0, show_default=True, help="Selection to mark.")
@friendly
def report_cmd(out, dest, top_percent):
    """Write report.html (SNR by depth with the selection marked, metric curves, eigenvalue histograms, MoE
    heatmaps) and for MoE models moe_experts.csv and moe_report.html, from the scan in --out or a published
    results JSON, without rescanning.

    \b
    Example:
      streamscan report --out scan
      streamscan report snr_results_deepseek-ai-DeepSeek-V2.json --dest dsv2
    """
    from streamscan.api import report

    for path in report(out, dest=dest, top_percent=top_percent):
        click.echo(path)


@main.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--dest", default="streamscan_compare", show_default=True, metavar="DIR", help="Write the files here.")
@click.option("--top-percent", "-p", type=float, default=25.0, show_default=True, help="Selections to overlap.")
@friendly
def compare_cmd(a, b, dest, top_percent):
    """Compare two scans A and B (scan directories, or a published snr_results_*.json): compare.csv and
    compare.html with SNR and metric ratios, rank shifts, the modules moved most, and selection overlap.

    \b
    Example:
      streamscan compare base-scan finetune-scan --dest diff -p 25
    """
    from streamscan.api import compare

    for path in compare(a, b, dest=dest, top_percent=top_percent):
        click.echo(path)
