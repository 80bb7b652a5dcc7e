"""commands: `streamscan run | inspect | status | select | metrics | merge | report | compare`. Errors become one
line on stderr (exit 2 for what the user gave); the library is imported only when a command runs, after its
options are checked."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from streamscan._version import __version__
from streamscan.cli import render
from streamscan.cli.options import (
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
    check_run,
    creates,
    dest,
    fail,
    friendly,
    interrupted,
    scan_dir,
    top_percent,
    usage_line,
    workers,
)
from streamscan.records import DEFAULT_OUT

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2: a group called without a command


class Streamscan(click.Group):
    """The command group, with the CLI's conventions for every command: ``--debug`` before or after the
    command, click's own errors as one line (exit 2, as click uses it), the process-wide effects of
    cli/process.py around the whole invocation."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from streamscan.cli.process import entry

        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:  # `streamscan run --debug ...` as `streamscan --debug run ...`
            args = ["--debug", *(a for i, a in enumerate(args) if i >= end or a != "--debug")]
        with entry():
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.ClickException as err:
                if not standalone_mode:
                    raise
                if isinstance(err, NO_ARGS) and getattr(err, "ctx", None) is not None:  # bare `streamscan`
                    click.echo(err.ctx.get_help(), err=True)
                    sys.exit(err.exit_code)
                fail(usage_line(err), err.exit_code)
            except click.Abort:  # Ctrl-C while click itself reads (a prompt)
                if not standalone_mode:
                    raise
                interrupted(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group("streamscan", cls=Streamscan, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="streamscan")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs (before or after the command).")
def main(debug: bool) -> None:
    """Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time.

    \b
    Directories: --out/-o DIR is the scan directory: `run` writes it, every other command reads it (or a
    published snr_results_*.json where its help says so; a positional DIR works too). --dest/-d DIR is
    where `select`, `metrics`, `report` and `compare` write [default: the scan directory]. -p/--top-percent N
    repeats in every command that takes it. Errors are one line on stderr: exit 2 for what you gave, 1 for
    the environment, 130/143 when interrupted.

    \b
    Example:
      streamscan run HuggingFaceTB/SmolLM2-135M --out scan -p 25
      streamscan select --out scan -p 50
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="streamscan: %(message)s")
    logging.getLogger("huggingface_hub").propagate = False  # it prints its own messages (retries): once, not twice


TOWER = click.option(
    "--tower",
    type=click.Choice(["language", "vision", "audio"]),
    default=None,
    help="One tower of a multimodal model only (language: the text model, its embeddings, head and projectors) "
    "[default: every tower, each ranked apart].",
)


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
@workers("CPU matrices scored in parallel, one torch thread each [default: physical cores].")
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
    "--name",
    default=None,
    help="Model id for output file names (slug: '/' and '_' -> '-') [default: the scan's in --out, else the "
    "directory name].",
)
@MOE_GROUPING
@TOWER
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress or summary (without a terminal, progress is a line every few seconds).",
)
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
@creates("out")
def run(model, out, quiet, workers, **options):
    """Scan MODEL (a checkpoint directory, a .safetensors/.gguf/.bin file or a Hub id org/name) and write
    the Spectrum outputs to --out.

    \b
    Example:
      streamscan run ./Llama-3-8B --out scan -p 25 -p 50
      torchrun --nproc-per-node 8 -m streamscan run org/name --out scan
    """
    check_run(model, out, options["devices"], options["max_memory"], options["max_disk"], options["shard"])
    # only now the library and torch (seconds)
    from streamscan.api import scan
    from streamscan.cli.process import before_scan, scan_settings
    from streamscan.cli.progress import Progress
    from streamscan.compute.devices import default_workers, parse_devices
    from streamscan.records import ScanOptions

    opts = ScanOptions.of(cpu_workers=workers, **options, **scan_settings())
    before_scan()
    slots = {d: (workers or default_workers()) if d == "cpu" else 1 for d in parse_devices(opts.devices)}
    progress = Progress(slots, quiet)
    try:
        res = scan(model, out, opts, progress=progress)
    finally:
        progress.close()
    if not quiet and progress.first is None and "rank" not in res.summary:  # no matrix was left to scan
        click.echo(render.finished_line(res.summary, res.out_dir))
    elif not quiet:
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
@workers("CPU workers the time estimate assumes [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="The plan's totals as JSON.")
@friendly
def inspect_cmd(model, include, exclude, revision, offline, workers, as_json):
    """List what a scan of MODEL would score and skip, with bytes and a time estimate (headers only, no download).

    The CPU estimate is the plan's FLOPs at a rate measured end to end on the demo scan (1.9 GFLOP/s per
    worker on 2 shared cores, plus 9 s of start-up and outputs); streamscan/results/overview.py says how to
    recalibrate it. The GPU figure is a prior, not a measurement.

    \b
    Example:
      streamscan inspect deepseek-ai/DeepSeek-V3 --include '*experts*'
    """
    from streamscan.api import inspect_model
    from streamscan.compute.devices import default_workers
    from streamscan.results.overview import overview

    index, plan = inspect_model(model, include, exclude, revision=revision, offline=offline)
    ov = overview(index, plan, workers or default_workers())
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


DEST = dest("the scan directory, or the results JSON's directory")


@main.command("select")
@scan_dir
@top_percent("Percent per type (repeatable).", required=True)
@MOE_GROUPING
@TOWER
@DEST
@click.option(
    "--names",
    type=click.Choice(["auto", "transformers", "checkpoint"]),
    default="auto",
    show_default=True,
    help="Parameter names of the lines: transformers >= 5's (renamed, fused experts as row ranges), the "
    "checkpoint's as stored (transformers < 5), or auto: transformers' where they differ and it is installed.",
)
@click.option(
    "--model",
    "checkpoint",
    default=None,
    metavar="PATH|ID",
    help="The scanned checkpoint (directory or Hub id), read for transformers' names [default: the scan's model].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["axolotl", "peft", "swift"]),
    default="axolotl",
    show_default=True,
    help="axolotl: the unfrozen_parameters YAML; peft: a LoRA config's target_modules/target_parameters/"
    "modules_to_save (JSON); swift: ms-swift's --trainable_parameters_regex arguments.",
)
@click.option(
    "--plugin-dir",
    default=None,
    metavar="DIR",
    help="Also write the results JSON where Axolotl's Spectrum plugin reads it: DIR/model_snr_results/.",
)
@click.option("--plugin-model", default=None, metavar="ID", help="Axolotl's base_model, for the plugin's file name.")
@friendly
@creates("dest")
def select_cmd(out, top_percent, moe_grouping, tower, dest, names, checkpoint, fmt, plugin_dir, plugin_model):
    """Write unfrozen-parameters YAMLs from the (finished or partial) scan in --out, or from a published
    Spectrum results JSON given in its place, without rescanning.

    \b
    Example:
      streamscan select --out scan -p 25 -p 50
      streamscan select snr_results_mistralai-Mixtral-8x22B-v0.1.json -p 25 --dest sel
    """
    from streamscan.api import select

    for p in top_percent:
        click.echo(
            select(
                out,
                p,
                moe_grouping=moe_grouping,
                dest=dest,
                names=names,
                checkpoint=checkpoint,
                format=fmt,
                tower=tower,
            )
        )
    if plugin_dir is not None:
        from streamscan.api import write_plugin

        click.echo(write_plugin(out, plugin_dir, plugin_model))


@main.command("metrics")
@scan_dir
@DEST
@workers("Processes computing metrics [default: CPU count, at most 8].")
@friendly
@creates("dest")
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
@top_percent("Also write the YAML for this percent (repeatable).")
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
    from streamscan.api import merge

    res = merge(out, top_percent, moe_grouping=moe_grouping)
    s = res.summary
    click.echo(render.merge_line(s, len(res.results), res.out_dir))
    missing = s.matrices - s.scored - s.no_snr
    if missing:
        fail(
            f"{missing} matrices are not done yet; rerun the missing shards (or `streamscan run` on {out}) and merge again",
            1,
        )


def per_percent(write, percents: tuple[float, ...]) -> list[Path]:
    """WRITE(percent) for each percent: one percent keeps the files' own names (report.html), several get
    ``_{N}percent`` before the suffix each (report_25percent.html, as the YAMLs are named)."""
    paths: list[Path] = []
    for p in sorted(set(percents)):
        for path in write(p):
            if len(set(percents)) > 1 and path.name in PER_PERCENT:
                path = path.replace(path.with_name(f"{path.stem}_{p:g}percent{path.suffix}"))
            if path not in paths:
                paths.append(path)
    return paths


PER_PERCENT = ("report.html", "compare.csv", "compare.html")  # the files that depend on the percent


@main.command("report")
@scan_dir
@DEST
@top_percent("Selection to mark [default: 25]; repeated: one report_{N}percent.html each.")
@friendly
@creates("dest")
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

    for path in per_percent(lambda p: report(out, dest=dest, top_percent=p), top_percent or (25.0,)):
        click.echo(path)


@main.command("compare")
@click.argument("a")
@click.argument("b")
@click.option(
    "--dest", "-d", default="streamscan_compare", show_default=True, metavar="DIR", help="Write the files here."
)
@top_percent("Selections to overlap [default: 25]; repeated: compare_{N}percent.csv/.html each.")
@friendly
@creates("dest")
def compare_cmd(a, b, dest, top_percent):
    """Compare two scans A and B (scan directories, or a published snr_results_*.json): compare.csv and
    compare.html with SNR and metric ratios, rank shifts, the modules moved most, and selection overlap.

    \b
    Example:
      streamscan compare base-scan finetune-scan --dest diff -p 25
    """
    from streamscan.api import compare

    for path in per_percent(lambda p: compare(a, b, dest=dest, top_percent=p), top_percent or (25.0,)):
        click.echo(path)
