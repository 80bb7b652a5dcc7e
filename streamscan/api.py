"""api: the functions of the public API (``streamscan.__all__``; docs/api.md).

``scan`` scores a checkpoint into the journal in OUT and writes the outputs; ``merge`` writes them from the
journals a split scan left. ``load_results``, ``status``, ``select``, ``moe_report``, ``metrics``, ``report``
and ``compare`` read the journal in OUT (or a published Spectrum results JSON in its place, where no spectra
are needed); ``inspect_model`` reads only headers. ``scan``, ``inspect_model`` and the scan itself live in
pipeline.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from streamscan.errors import UsageError
from streamscan.layout import tower as tower_of
from streamscan.pipeline import ScanResult, check_grouping, check_tower, inspect_model, merge_journals, scan
from streamscan.records import DEFAULT_OUT, Result, ScanHeader
from streamscan.results.journal import is_locked, journal_files, no_scan, read_journals
from streamscan.results.moe_report import write_moe_outputs
from streamscan.results.outputs import write_yaml
from streamscan.results.published import is_results_json, load_published
from streamscan.results.scan_outputs import all_names, count, in_order, yaml_options

__all__ = [
    "DEFAULT_OUT",
    "ScanResult",
    "scan",
    "merge",
    "inspect_model",
    "load_results",
    "compare",
    "metrics",
    "moe_report",
    "report",
    "select",
    "status",
]
REPORT_METRICS_LIMIT = 5000  # a report computes metrics itself up to this many matrices (else: run `metrics`)


def check_percent(top_percent: float) -> float:
    if not 0 < top_percent <= 100:
        raise UsageError(f"--top-percent {top_percent}: must be in (0, 100]")
    return float(top_percent)


def merge(out: str | Path, top_percent: Iterable[float] = (), moe_grouping: str = "reference") -> ScanResult:
    """Fold the rank and shard journals of a split scan in OUT into its single-process journal and write the
    outputs (YAMLs for each TOP_PERCENT; MoE experts ranked with MOE_GROUPING), as a single-process scan
    writes them: identical for identical results."""
    return merge_journals(out, top_percent, moe_grouping=moe_grouping)


def load_results(out: str | Path) -> tuple[ScanHeader, list[Result]]:
    """The journal header and the results recorded so far (a finished or partial scan), or those of a
    published Spectrum results JSON (``snr_results_*.json``) given in place of the scan directory."""
    out_dir = Path(out)
    if is_results_json(out_dir):
        return load_published(out_dir)
    if not journal_files(out_dir):
        raise no_scan(out_dir)
    header, by_name = read_journals(out_dir)
    assert header is not None
    return header, in_order(header, by_name)


def destination(out: str | Path, dest: str | Path | None) -> Path:
    """Where outputs from OUT go: DEST, else the scan directory (a results JSON's own directory)."""
    if dest is not None:
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(dest)
    return Path(out).parent if is_results_json(out) else Path(out)


def select(
    out: str | Path,
    top_percent: float,
    moe_grouping: str = "reference",
    dest: str | Path | None = None,
    names: str = "auto",
    checkpoint: str | Path | None = None,
    format: str = "axolotl",
    tower: str | None = None,
) -> Path:
    """Write the YAML for TOP_PERCENT from a finished or partial scan in OUT (or a published results JSON),
    without rescanning, into DEST (default: OUT, or the JSON's directory). NAMES: whose parameter names the
    lines use, ``auto`` | ``transformers`` | ``checkpoint`` (``trainer_names.names_for``), read from the
    checkpoint at CHECKPOINT (default: the scanned model's id). FORMAT: ``axolotl`` (the YAML), ``peft``
    (a LoRA config's target_modules/target_parameters/modules_to_save, JSON) or ``swift`` (ms-swift's
    arguments); see ``results.formats``. TOWER ("language", "vision", "audio"): select from that tower of a
    multimodal model only (``layout.tower``)."""
    from streamscan.results.formats import FORMATS, write_format

    if format not in FORMATS:
        raise UsageError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    check_grouping(moe_grouping)
    check_tower(tower)
    header, results = load_results(out)
    if tower is not None:
        results = [r for r in results if tower_of(r.name) == tower]
    options = yaml_options(header, moe_grouping, names, checkpoint)
    if format != "axolotl":
        from streamscan.results.selection import select_top

        selection = select_top(results, check_percent(top_percent), options["group"])
        header_line = f"streamscan: top {top_percent:g}% by Spectrum SNR per type, model {header.model}\n"
        header_line += options["names"].line() if options["names"] is not None else options["names_note"]
        return write_format(destination(out, dest), header.slug, selection, options["names"], format, header_line)
    return write_yaml(
        destination(out, dest),
        header.slug,
        results,
        check_percent(top_percent),
        all_names(header),
        header.model,
        **options,
    )


def write_plugin(out: str | Path, plugin_dir: str | Path, model_name: str | None = None) -> Path:
    """The results JSON of the scan in OUT (or a published one) where Axolotl's Spectrum plugin reads it:
    ``PLUGIN_DIR/model_snr_results/snr_results_{slug}.json``, slug made from MODEL_NAME (Axolotl's
    ``base_model`` or ``spectrum_model_name``; default: the scanned model's id) as the plugin makes it."""
    from streamscan.results.formats import write_plugin_json

    header, results = load_results(out)
    try:
        return write_plugin_json(Path(plugin_dir), model_name or header.model, results)
    except ValueError as err:
        raise UsageError(f"--plugin-model: {err}; give Axolotl's base_model") from None


def moe_report(out: str | Path, dest: str | Path | None = None) -> list[Path]:
    """Write moe_experts.csv and moe_report.html from the finished or partial scan in OUT (or a published
    results JSON), without rescanning, into DEST (default: OUT, or the JSON's directory)."""
    header, results = load_results(out)
    if not header.experts:
        raise UsageError(
            f"{out}: this scan has no MoE experts; the per-expert report is for Mixture-of-Experts checkpoints"
        )
    return write_moe_outputs(destination(out, dest), results, header.experts, header.model)


def metrics(out: str | Path, dest: str | Path | None = None, workers: int | None = None) -> list[Path]:
    """Write metrics.csv/.json (per matrix) and metrics_by_type.csv/.json from the spectra the scan in OUT
    kept (no rescan) into DEST (default: OUT). Matrices without a stored spectrum are marked missing."""
    from streamscan.results.metrics_table import write_metrics

    if is_results_json(out):
        raise UsageError(f"{out}: a published results JSON holds SNRs only, no spectra; metrics need a scan directory")
    _, results = load_results(out)
    paths, _ = write_metrics(Path(out), results, destination(out, dest), workers)
    return paths


def status(out: str | Path) -> dict:
    """How far the scan in OUT got."""
    header, results = load_results(out)
    n = count(results)
    total = len(header.targets)
    return {
        "model": header.model,
        "method": header.method,
        "total": total,
        "done": n["ok"] + n["null"],
        "scored": n["ok"],
        "no_snr": n["null"],
        "failed": n["error"],
        "remaining": total - n["ok"] - n["null"],
        "running": is_locked(out),
        "compute_seconds": sum(r.seconds for r in results),
    }


def _metric_rows(out: Path, dest: Path, results: list[Result], spectra: dict | None = None) -> list[dict] | None:
    """Rows of metrics.json in DEST or OUT (read strictly), else computed from OUT's kept SPECTRA (loaded
    here when not given) when there are few."""
    from streamscan.results.metrics_table import NAMES, kept_spectra, metrics_rows, read_metrics_json
    from streamscan.results.spectra import kept

    if is_results_json(out):
        return None
    for where in (dest, out):
        path = Path(where) / NAMES["json"]
        if path.is_file() or path.is_symlink():
            return read_metrics_json(path)
    if not kept(out) or len(results) > REPORT_METRICS_LIMIT:
        return None
    return metrics_rows(results, spectra if spectra is not None else kept_spectra(out, results))


def report(out: str | Path, dest: str | Path | None = None, top_percent: float = 25.0) -> list[Path]:
    """Write report.html (SNR by depth with the TOP_PERCENT selection, metric curves, eigenvalue histograms,
    MoE heatmaps) and, for an MoE model, moe_experts.csv and moe_report.html, from the scan in OUT or a
    published results JSON, into DEST (default: OUT, or the JSON's directory). No rescan."""
    from streamscan.results.metrics_table import kept_spectra
    from streamscan.results.moe_report import expert_table, write_moe_outputs
    from streamscan.results.report import write_report

    header, results = load_results(out)
    where = destination(out, dest)
    spectra = None if is_results_json(out) else kept_spectra(Path(out), results)
    source = f"Published Spectrum scan {Path(out).name} (no spectra)." if is_results_json(out) else ""
    table = expert_table(results, header.experts) if header.experts else []  # for report.html and moe_report.html
    paths = [
        write_report(
            where,
            header.model,
            results,
            check_percent(top_percent),
            experts=header.experts,
            metric_rows=_metric_rows(Path(out), where, results, spectra),
            spectra=spectra,
            source=source,
            table=table,
        )
    ]
    if header.experts:
        paths += write_moe_outputs(where, results, header.experts, header.model, table)
    return paths


def compare(
    a: str | Path, b: str | Path, dest: str | Path = "streamscan_compare", top_percent: float = 25.0
) -> list[Path]:
    """Write compare.csv and compare.html for scans A and B (scan directories or published results JSONs):
    SNR ratio, metric ratios (where both kept spectra), rank shifts within each type, the modules moved
    most and the overlap of the two selections at TOP_PERCENT, into DEST. No rescan."""
    from streamscan.results.compare import compare_rows, write_compare

    percent = check_percent(top_percent)
    sides = []
    for out in (a, b):
        header, results = load_results(out)
        rows = _metric_rows(Path(out), Path(out), results)
        sides.append((header, results, {r["name"]: r for r in rows} if rows else None))
    (ha, ra, ma), (hb, rb, mb) = sides
    rows = compare_rows(ra, rb, percent, ma, mb)
    if not rows:
        raise UsageError(f"{a} and {b}: no module name in common; compare scans of the same architecture")
    return write_compare(Path(dest), rows, f"{ha.model} ({a})", f"{hb.model} ({b})", percent)
