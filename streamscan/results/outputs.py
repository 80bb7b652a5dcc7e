"""outputs: the Spectrum-compatible outputs, written atomically from the journal's results.

- ``snr_results_{slug}.json``: {module: {"snr": float, "type": str}} for every scored matrix; a degenerate
  one (SNR inf, ranked first) has "snr": 1.7976931348623157e+308 (``JSON_INF``) and "degenerate": its kind
- ``snr_results_{slug}_sorted.json``: {type: {module: snr}} by descending SNR, scored matrices only
  (unscored ones are listed with their reasons in the summary, D1)
- ``snr_results_{slug}_unfrozenparameters_{N}percent.yaml``: per --top-percent N
- ``streamscan_summary.json``: method, counts, timings and every skipped tensor with its reason
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from streamscan.errors import UsageError
from streamscan.records import JSON_INF, Result
from streamscan.results.files import write_atomic
from streamscan.results.selection import (
    Group,
    Prefixes,
    natural_order,
    rank_ordered,
    select_ranked,
    select_top,
    yaml_text,
)

if TYPE_CHECKING:
    from streamscan.results.trainer_names import TrainerNames


def _dumps(obj) -> str:
    """Strict JSON (no NaN or Infinity), indented as the reference's ``json.dump(..., indent=4)``."""
    return json.dumps(obj, indent=4, allow_nan=False) + "\n"


def _json_snr(snr: float) -> float:
    """A scored SNR as strict JSON holds it: inf (a degenerate matrix) as ``JSON_INF``."""
    return JSON_INF if snr == math.inf else snr


def results_json(results: Iterable[Result], ordered: bool = False) -> dict:
    """The results JSON; ORDERED: RESULTS are already in natural order (``natural_order``). Scored matrices
    only (D1: no ``null`` SNR for the Axolotl plugin to trip on; the summary lists the unscored ones); a
    degenerate one's inf is written as ``JSON_INF`` beside ``"degenerate": kind``."""
    out = {}
    for r in results if ordered else natural_order(results):
        if r.snr is None:
            continue
        entry: dict = {"snr": _json_snr(r.snr), "type": r.type}
        if r.degenerate is not None:
            entry["degenerate"] = r.degenerate
        out[r.name] = entry
    return out


def sorted_json(
    results: Iterable[Result], ranked: dict[str, list[Result]] | None = None, ordered: bool = False
) -> dict:
    """The sorted JSON, scored matrices only (D1); RANKED: ``rank_by_type(results)`` when at hand, ORDERED:
    RESULTS are already in natural order."""
    if ranked is None:
        ranked = rank_ordered(list(results) if ordered else natural_order(results))
    return {t: {r.name: _json_snr(r.snr) for r in members} for t, members in ranked.items() if members}


def percent_label(percent: float) -> str:
    return f"{percent:g}".replace(".", "_")


def output_paths(out_dir: Path, slug: str, percents: Iterable[float] = ()) -> dict[str, Path]:
    base = Path(out_dir) / f"snr_results_{slug}"
    paths = {"results": base.with_name(base.name + ".json"), "sorted": base.with_name(base.name + "_sorted.json")}
    for p in percents:
        paths[f"yaml{p:g}"] = base.with_name(f"{base.name}_unfrozenparameters_{percent_label(p)}percent.yaml")
    return paths


def check_names(out_dir: Path, slug: str, percents: Iterable[float] = ()) -> None:
    """Refuse, before any work, output names the file system cannot hold (a very long --name)."""
    try:
        limit = os.pathconf(out_dir, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for path in output_paths(out_dir, slug, percents).values():
        size = len(f".{path.name}.XXXXXXXX.tmp".encode())  # the temporary file beside it (files.write_atomic)
        if size > limit:
            raise UsageError(
                f"--name {slug[:40]}...: output names would be {size} bytes, over the {limit} this file system "
                "allows; give a shorter --name"
            )


def write_yaml(
    out_dir: Path,
    slug: str,
    results: list[Result],
    percent: float,
    all_names: list[str] | Prefixes,
    model: str,
    group: Group | None = None,
    fused: dict[str, str] | None = None,
    grouping: str = "reference",
    ranked: dict[str, list[Result]] | None = None,
    names: TrainerNames | None = None,
    names_note: str = "",
) -> Path:
    """The YAML for PERCENT; ``group``/``grouping`` rank MoE experts another way (--moe-grouping),
    ``fused`` names expert slices of fused tensors (see ``yaml_text``); ``ranked``: ``rank_by_type(results,
    group)`` when at hand (several percents share it); ``names``: the trainer's parameter names
    (``trainer_names.names_for``), ``names_note``: the line saying whose names the YAML uses."""
    path = output_paths(out_dir, slug, [percent])[f"yaml{percent:g}"]
    header = f"streamscan: top {percent:g}% by Spectrum SNR per type, model {model}"
    if group is not None and grouping != "reference":
        header += f"\nMoE experts ranked with --moe-grouping {grouping}"
    if names is None and names_note:
        header += f"\n{names_note}"
    if getattr(group, "towers", False):
        header += "\nvision/audio tower matrices ranked apart from the language tower's of the same type"
    selection = (
        select_top(results, percent, group) if ranked is None else select_ranked(results, ranked, percent, group)
    )
    return write_atomic(path, yaml_text(selection, all_names, header, fused, names))


def write_outputs(
    out_dir: Path,
    slug: str,
    results: Iterable[Result],
    percents: Iterable[float],
    all_names: list[str],
    summary: dict,
    **yaml_options,
) -> list[Path]:
    """Write every output; returns their paths. Identical inputs give byte-identical files.

    The results are put in natural order and ranked once (and once more for the YAMLs when MoE experts
    are ranked in other groups), the prefix index of every name built once for all YAMLs."""
    results = list(results)
    ordered = natural_order(results)
    ranked = rank_ordered(ordered)
    paths = output_paths(out_dir, slug)
    written = [
        write_atomic(paths["results"], _dumps(results_json(ordered, ordered=True))),
        write_atomic(paths["sorted"], _dumps(sorted_json(ordered, ranked, ordered=True))),
    ]
    percents = list(percents)
    if percents:
        group = yaml_options.get("group")
        yaml_ranked = ranked if group is None else rank_ordered(ordered, group)
        prefixes = Prefixes(all_names)
        model = summary.get("model", slug)
        written += [
            write_yaml(out_dir, slug, results, p, prefixes, model, ranked=yaml_ranked, **yaml_options) for p in percents
        ]
    written.append(write_atomic(Path(out_dir) / "streamscan_summary.json", _dumps(summary)))
    return written
