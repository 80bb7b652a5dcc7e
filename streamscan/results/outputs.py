"""report: the Spectrum-compatible outputs, written atomically from the journal's results.

- ``snr_results_{slug}.json``: {module: {"snr": float | null, "type": str}} (+ "reason" when null)
- ``snr_results_{slug}_sorted.json``: {type: {module: snr}} by descending SNR, unscored last as null
- ``snr_results_{slug}_unfrozenparameters_{N}percent.yaml``: per --top-percent N
- ``streamscan_summary.json``: method, counts, timings and every skipped tensor with its reason
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _enc
from pathlib import Path

from streamscan.errors import UsageError
from streamscan.records import Result
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


def _dumps(obj) -> str:
    """``json.dumps(obj, indent=4, allow_nan=False)`` + newline. A dict of flat values and dicts of flat
    values (the results, sorted and summary JSON) is laid out here with the C string encoder: with
    ``indent`` json falls back to its pure Python encoder, 1 s per 70k-matrix file. Byte-identical either
    way (tested); anything else (deeper nesting, a key json would coerce) is left to json."""
    if isinstance(obj, dict) and obj:
        try:
            return _dumps_nested(obj)
        except _NotFlat:
            pass
    return json.dumps(obj, indent=4, allow_nan=False) + "\n"


class _NotFlat(Exception):
    """A value or key ``_dumps_nested`` does not lay out (json does)."""


def _float(v: float) -> str:
    if v - v != 0.0:  # NaN or an infinity (x - x is 0.0 for every finite x)
        raise ValueError(f"Out of range float values are not JSON compliant: {v!r}")
    return float.__repr__(v)


def _scalar(v) -> str:
    if isinstance(v, str):
        return _enc(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, int):
        return int.__repr__(v)
    raise _NotFlat(v)


def _key(k) -> str:
    if not isinstance(k, str):
        raise _NotFlat(k)
    return _enc(k)


def _inner(inner: dict) -> str:
    enc, scalar, float_repr = _enc, _scalar, float.__repr__
    items = []
    append = items.append
    for ik, iv in inner.items():
        t = type(iv)
        if t is float and iv - iv == 0.0:  # finite
            v = float_repr(iv)
        elif t is str:
            v = enc(iv)
        else:
            v = scalar(iv)
        append(f"\n        {enc(ik) if type(ik) is str else _key(ik)}: {v}")
    return ",".join(items)


def _dumps_nested(obj: dict) -> str:
    outer = []
    for k, v in obj.items():
        if type(v) is dict or isinstance(v, dict):
            outer.append(f"\n    {_key(k)}: {{{_inner(v)}\n    }}" if v else f"\n    {_key(k)}: {{}}")
        else:
            outer.append(f"\n    {_key(k)}: {_scalar(v)}")
    return "{" + ",".join(outer) + "\n}\n"


def results_json(results: Iterable[Result], ordered: bool = False) -> dict:
    """The results JSON; ORDERED: RESULTS are already in natural order (``natural_order``)."""
    out = {}
    for r in results if ordered else natural_order(results):
        entry: dict = {"snr": r.snr, "type": r.type}
        if r.snr is None:
            entry["reason"] = r.reason
        out[r.name] = entry
    return out


def results_text(ordered: list[Result]) -> str:
    """``_dumps(results_json(ordered, ordered=True))`` for results in natural order, each record laid out
    in one piece without the dicts (tested equal); through the dicts where names repeat or a field is not
    what a journal holds."""
    names = {r.name for r in ordered}
    if not ordered or len(names) != len(ordered):
        return _dumps(results_json(ordered, ordered=True))
    enc, float_repr = _enc, float.__repr__
    parts = []
    append = parts.append
    try:
        for r in ordered:
            name, type_, snr = r.name, r.type, r.snr
            if type(name) is not str or type(type_) is not str:
                raise _NotFlat(name)
            if snr is None:
                append(
                    f'\n    {enc(name)}: {{\n        "snr": null,\n        "type": {enc(type_)},\n        '
                    f'"reason": {_scalar(r.reason)}\n    }}'
                )
            else:
                value = float_repr(snr) if type(snr) is float and snr - snr == 0.0 else _scalar(snr)
                append(f'\n    {enc(name)}: {{\n        "snr": {value},\n        "type": {enc(type_)}\n    }}')
    except _NotFlat:
        return _dumps(results_json(ordered, ordered=True))
    return "{" + ",".join(parts) + "\n}\n"


def sorted_json(
    results: Iterable[Result], ranked: dict[str, list[Result]] | None = None, ordered: bool = False
) -> dict:
    """The sorted JSON; RANKED: ``rank_by_type(results)`` when at hand, ORDERED: RESULTS are already in
    natural order."""
    ordered = list(results) if ordered else natural_order(results)
    if ranked is None:
        ranked = rank_ordered(ordered)
    out = {t: {r.name: r.snr for r in members} for t, members in ranked.items()}
    for r in ordered:
        if r.snr is None:
            out[r.type][r.name] = None
    return out


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
) -> Path:
    """The YAML for PERCENT; ``group``/``grouping`` rank MoE experts another way (--moe-grouping),
    ``fused`` names expert slices of fused tensors (see ``yaml_text``); ``ranked``: ``rank_by_type(results,
    group)`` when at hand (several percents share it)."""
    path = output_paths(out_dir, slug, [percent])[f"yaml{percent:g}"]
    header = f"streamscan: top {percent:g}% by Spectrum SNR per type, model {model}"
    if group is not None:
        header += f"\nMoE experts ranked with --moe-grouping {grouping}"
    selection = (
        select_top(results, percent, group) if ranked is None else select_ranked(results, ranked, percent, group)
    )
    return write_atomic(path, yaml_text(selection, all_names, header, fused))


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
        write_atomic(paths["results"], results_text(ordered)),
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
