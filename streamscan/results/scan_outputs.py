"""scan_outputs: a scan's outputs and summary from its journal header and results (shared by scan, merge, select)."""

from __future__ import annotations

import resource
from collections.abc import Iterable
from pathlib import Path

from streamscan._version import __version__
from streamscan.layout import module_name
from streamscan.planning.experts import fused_tensor, group_function
from streamscan.records import Result, ScanHeader, ScanSummary
from streamscan.results.moe_report import write_moe_outputs
from streamscan.results.outputs import write_outputs
from streamscan.results.trainer_names import names_for


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def all_names(header: ScanHeader) -> list[str]:
    """Every module name of the checkpoint (expert slices as their fused tensor), for prefix checks."""
    return [fused_tensor(n) or n for n in header.targets] + [
        module_name(n) for n, _ in header.skipped + header.consumed
    ]


def yaml_options(
    header: ScanHeader, moe_grouping: str, names: str = "auto", checkpoint: str | Path | None = None
) -> dict:
    """How the YAML ranks MoE experts, which selected names are slices of fused tensors, and whose
    parameter names it writes (NAMES: auto | transformers | checkpoint, see ``trainer_names.names_for``;
    CHECKPOINT: where the scanned checkpoint is, default the scan's model id)."""
    fused = {n: t for n in header.targets if (t := fused_tensor(n))}
    trainer, note = names_for(str(checkpoint or header.model), list(header.targets), names)
    return {
        "group": group_function(moe_grouping, header.experts, header.targets),
        "fused": fused,
        "grouping": moe_grouping,
        "names": trainer,
        "names_note": note,
    }


def in_order(header: ScanHeader, found: dict[str, Result]) -> list[Result]:
    """The recorded results, in the header's target order."""
    return [found[n] for n in header.targets if n in found]


def count(results: Iterable[Result]) -> dict[str, int]:
    out = {"ok": 0, "null": 0, "error": 0}
    for r in results:
        out[r.status] += 1
    return out


def summarize(
    header: ScanHeader, results: list[Result], method: str, workers: int | None, seconds: float, resumed: int, **extra
) -> ScanSummary:
    """The summary of RESULTS (EXTRA: the fields a kind of run adds, see ScanSummary)."""
    n = count(results)
    return ScanSummary(
        model=header.model,
        method=method,
        streamscan=__version__,
        matrices=len(header.targets),
        scored=n["ok"],
        no_snr=n["null"],
        failed=n["error"],
        resumed_from_journal=resumed,
        skipped=len(header.skipped),
        seconds=round(seconds, 3),
        compute_seconds=round(sum(r.seconds for r in results), 3),
        cpu_workers=workers,
        peak_rss_mb=round(peak_rss_mb(), 1),
        failures={r.name: r.reason for r in results if r.status == "error"},
        skipped_tensors=dict(header.skipped),
        consumed_tensors=dict(header.consumed),
        unscored_tensors={r.name: r.reason or "" for r in results if r.status == "null"},
        degenerate_tensors={r.name: r.degenerate for r in results if r.degenerate is not None},
        **extra,
    )


def placement_notes(results: Iterable[Result]) -> dict[str, str]:
    return {r.name: r.note for r in results if r.note}


def write_scan_outputs(
    out_dir: Path,
    header: ScanHeader,
    results: list[Result],
    percents: list[float],
    summary: ScanSummary,
    moe_grouping: str,
    checkpoint: str | Path | None = None,
) -> tuple[ScanSummary, list[Path]]:
    """Every output of a scan; for an MoE checkpoint also its counts in the summary and the per-expert report."""
    experts = header.experts
    if experts:
        kinds = [r.kind for r in experts]
        summary = summary.replace(
            moe={
                "expert_matrices": kinds.count("expert"),
                "shared_expert_matrices": kinds.count("shared"),
                "routers": kinds.count("router"),
                "grouping": moe_grouping,
            }
        )
    paths = write_outputs(
        out_dir,
        header.slug,
        results,
        percents,
        all_names(header),
        summary.to_dict(),
        **(yaml_options(header, moe_grouping, checkpoint=checkpoint) if percents else {}),
    )
    if experts:
        paths += write_moe_outputs(out_dir, results, experts, header.model)
    return summary, paths
