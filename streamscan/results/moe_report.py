"""moe_report: per-expert outputs for Mixture-of-Experts scans, from the journal's results.

- ``moe_experts.csv``: one row per expert matrix (``kind`` expert | shared) and per router (``kind`` router),
  with the expert's rank in its layer, the layer's median SNR for that projection and an outlier flag.
- ``moe_report.html``: one self-contained page (inline SVG, no extra dependency, opens in any browser):
  a layer x expert SNR heatmap per projection, outliers, router SNRs, each layer's experts ranked.

Outliers: no SNR (dead = all-zero, rank-deficient = no noise, NaN...), or an SNR more than
``OUTLIER_FACTOR`` times above or below the median of its layer's experts for the same projection.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from streamscan.layout import natural_key
from streamscan.records import ExpertRow, Result
from streamscan.results.files import write_atomic
from streamscan.results.safe_text import csv_cell, esc

CSV_NAME = "moe_experts.csv"
HTML_NAME = "moe_report.html"
OUTLIER_FACTOR = 4.0
COLUMNS = [
    "layer",
    "expert",
    "projection",
    "tensor",
    "snr",
    "kind",
    "name",
    "rank_in_layer",
    "layer_median",
    "ratio_to_median",
    "flag",
    "reason",
]
PROJECTION_ORDER = {"gate": 0, "up": 1, "down": 2}
KIND_ORDER = {"expert": 0, "shared": 1, "router": 2}
VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _flag(snr: float | None, reason: str | None, median: float | None) -> str:
    if snr == math.inf:
        return "degenerate (SNR inf: ranked first, as the reference ranks it)"
    if snr is None:
        reason = reason or ""
        if reason == "all-zero matrix":
            return "dead (all-zero)"
        if reason.startswith("no noise"):
            return "rank-deficient (no noise)"
        return "no SNR"
    if median:
        ratio = snr / median
        if ratio >= OUTLIER_FACTOR:
            return f"high ({ratio:.1f}x layer median)"
        if ratio <= 1 / OUTLIER_FACTOR:
            return f"low ({ratio:.2f}x layer median)"
    return ""


def expert_table(results: Iterable[Result], rows: Iterable[ExpertRow]) -> list[dict]:
    """One dict per expert matrix and router (COLUMNS), ordered by layer, kind, projection, expert."""
    by_name = {r.name: r for r in results}
    table = []
    for row in rows:
        res = by_name.get(row.name)
        if res is None:  # not scored yet (partial scan)
            continue
        table.append(
            {
                "layer": row.layer,
                "expert": row.expert,
                "projection": row.projection,
                "tensor": row.tensor,
                "snr": res.snr,
                "kind": row.kind,
                "name": row.name,
                "rank_in_layer": None,
                "layer_median": None,
                "ratio_to_median": None,
                "flag": "",
                "reason": res.reason or "",
            }
        )
    groups: dict[tuple, list[dict]] = {}
    for entry in table:
        if entry["kind"] == "expert":
            groups.setdefault((entry["layer"], entry["projection"]), []).append(entry)
    for members in groups.values():
        scored = sorted((e for e in members if e["snr"] is not None), key=lambda e: (-e["snr"], e["expert"]))
        finite = [e["snr"] for e in scored if e["snr"] != math.inf]  # degenerate ones (inf) are flagged apart
        median = statistics.median(finite) if finite else None
        for rank, e in enumerate(scored, start=1):
            e["rank_in_layer"] = rank
        for e in members:
            e["layer_median"] = median
            if median and e["snr"] is not None:
                e["ratio_to_median"] = e["snr"] / median
            e["flag"] = _flag(e["snr"], e["reason"], median)
    for e in table:
        if e["kind"] != "expert":
            e["flag"] = _flag(e["snr"], e["reason"], None)
    table.sort(
        key=lambda e: (
            e["layer"] if e["layer"] is not None else -1,
            KIND_ORDER[e["kind"]],
            PROJECTION_ORDER.get(e["projection"], 9),
            e["projection"],
            e["expert"] if isinstance(e["expert"], int) else 1 << 30,
            natural_key(e["name"]),
        )
    )
    return table


def csv_text(table: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(
        ["" if (v := e[k]) is None else (f"{v:.10g}" if isinstance(v, float) else csv_cell(v)) for k in COLUMNS]
        for e in table
    )
    return buf.getvalue()


def _color(t: float) -> str:
    """The viridis colour at T (clamped to [0, 1]) as #rrggbb."""
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    f = t - i
    (r0, g0, b0), (r1, g1, b1) = VIRIDIS[i], VIRIDIS[i + 1]
    return f"#{round(r0 + (r1 - r0) * f):02x}{round(g0 + (g1 - g0) * f):02x}{round(b0 + (b1 - b0) * f):02x}"


def heatmap_svg(entries: list[dict], title: str, width: int = 1140) -> str:
    """Layers (rows) x experts (columns, 'shared' last) of one projection, scaled to WIDTH px: colour = log
    SNR in this projection's range, grey = no SNR, outliers outlined; hover a cell for its detail."""
    layers = sorted({e["layer"] for e in entries}, key=lambda x: -1 if x is None else x)
    experts = sorted({e["expert"] for e in entries if isinstance(e["expert"], int)})
    if any(e["expert"] == "shared" for e in entries):
        experts.append("shared")
    logs = [math.log(s) for e in entries if (s := e["snr"]) is not None and 0 < s < math.inf]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    left, top, right = 64, 40, 10
    cw = max(1.0, min(28.0, (width - left - right) / max(len(experts), 1)))
    ch = max(3.0, min(20.0, cw, 900 / max(len(layers), 1)))
    gap = 1 if cw >= 4 else 0
    grid_w, grid_h = cw * len(experts), ch * len(layers)
    height = int(top + grid_h + 70)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11" class="heatmap">',
        f'<text x="0" y="14" font-weight="bold">{esc(title)}</text>',
    ]
    col = {x: i for i, x in enumerate(experts)}
    row = {x: i for i, x in enumerate(layers)}
    cstep = max(1, math.ceil(28 / cw))
    for x, i in col.items():
        if i % cstep == 0 or x == "shared":
            label = "sh" if x == "shared" else str(x)
            out.append(f'<text x="{left + i * cw + cw / 2:.1f}" y="{top - 5}" text-anchor="middle">{label}</text>')
    rstep = max(1, math.ceil(13 / ch))
    for x, i in row.items():
        if i % rstep == 0:
            out.append(f'<text x="{left - 4}" y="{top + i * ch + ch / 2 + 4:.1f}" text-anchor="end">layer {x}</text>')
    out.append(f'<text x="{left + grid_w / 2:.0f}" y="{top - 18}" text-anchor="middle" fill="#555">expert</text>')
    out += [_cell(e, left + col[e["expert"]] * cw, top + row[e["layer"]] * ch, cw, ch, gap, lo, hi) for e in entries]
    ybar, bar_w = top + grid_h + 16, min(360.0, max(grid_w, 200.0))
    for k in range(60):
        out.append(f'<rect x="{left + k * bar_w / 60:.1f}" y="{ybar:.1f}" width="{bar_w / 60 + 0.3:.2f}" height="10" '
                   f'fill="{_color(k / 59)}"/>')  # fmt: skip
    out.append(f'<text x="{left}" y="{ybar + 24:.1f}">{math.exp(lo):.3g}</text>')
    out.append(f'<text x="{left + bar_w:.1f}" y="{ybar + 24:.1f}" text-anchor="end">{math.exp(hi):.3g}</text>')
    out.append(f'<text x="{left + bar_w + 12:.1f}" y="{ybar + 9:.1f}">SNR, log scale; grey: no SNR; red outline: '
               "outlier in its layer</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)


def _cell(e: dict, x: float, y: float, cw: float, ch: float, gap: int, lo: float, hi: float) -> str:
    """One heatmap cell at (X, Y): its colour, outline and hover text."""
    s = e["snr"]
    if s is None or not s > 0:
        fill = "#bbbbbb"
    else:  # inf (a degenerate matrix): the top colour
        fill = _color(1.0 if s == math.inf else (math.log(s) - lo) / (hi - lo) if hi > lo else 0.5)
    stroke = ' stroke="#e00000" stroke-width="1"' if e["flag"] else ""
    snr = "no SNR" if e["snr"] is None else f"SNR {e['snr']:.4g}"
    tip = f"layer {e['layer']}, expert {e['expert']}: {e['name']}: {snr}" + (f", {e['flag']}" if e["flag"] else "")
    return (
        f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(cw - gap, 0.6):.2f}" height="{max(ch - gap, 0.6):.2f}" '
        f'fill="{fill}"{stroke}><title>{esc(tip)}</title></rect>'
    )


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def html_text(table: list[dict], model: str) -> str:
    experts = [e for e in table if e["kind"] in ("expert", "shared")]
    routers = [e for e in table if e["kind"] == "router"]
    projections = sorted({e["projection"] for e in experts}, key=lambda p: (PROJECTION_ORDER.get(p, 9), p))
    outliers = [e for e in experts if e["flag"]]
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>streamscan MoE report: {esc(model)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.rank{font-family:monospace;font-size:11px}"
        ".flag{color:#c00000}</style></head><body>",
        f"<h1>Per-expert SNR: {esc(model)}</h1>",
        f"<p>{sum(e['kind'] == 'expert' for e in experts)} routed-expert matrices, "
        f"{sum(e['kind'] == 'shared' for e in experts)} shared-expert matrices, {len(routers)} routers; "
        f"{len(outliers)} outliers (no SNR, or more than {OUTLIER_FACTOR:g}x from the median of their layer's "
        f"experts for the same projection). Expert indices are not aligned across layers: compare experts "
        "within a layer.</p>",
    ]
    parts.append("<h2>Heatmaps</h2>")
    for proj in projections:
        parts.append(heatmap_svg([e for e in experts if e["projection"] == proj], f"{proj}: layer x expert"))
    parts.append("<h2>Outliers</h2>")
    if outliers:
        parts.append(
            "<table><tr><th>layer</th><th>expert</th><th>projection</th><th>SNR</th><th>layer median</th>"
            "<th>flag</th><th>matrix</th></tr>"
        )
        for e in outliers:
            parts.append(
                f"<tr><td>{e['layer']}</td><td>{e['expert']}</td><td>{esc(e['projection'])}</td>"
                f"<td>{_fmt(e['snr'])}</td><td>{_fmt(e['layer_median'])}</td>"
                f"<td class=flag>{esc(e['flag'])}{(': ' + esc(e['reason'])) if e['reason'] else ''}</td>"
                f"<td>{esc(e['name'])}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Routers</h2>")
    if routers:
        parts.append("<table><tr><th>layer</th><th>router</th><th>SNR</th><th>note</th></tr>")
        for e in routers:
            note = e["flag"] + (f": {e['reason']}" if e["reason"] else "")
            parts.append(
                f"<tr><td>{e['layer']}</td><td>{esc(e['name'])}</td><td>{_fmt(e['snr'])}</td><td>{esc(note)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No router weights were scored.</p>")
    parts.append("<h2>Experts ranked within each layer</h2>")
    parts.append(
        "<table><tr><th>layer</th><th>projection</th><th>median</th><th>experts by SNR, highest first</th></tr>"
    )
    ranked: dict[tuple, list[dict]] = {}
    for e in experts:
        if e["kind"] == "expert":
            ranked.setdefault((e["layer"], e["projection"]), []).append(e)
    for (layer, proj), members in ranked.items():
        order = sorted(members, key=lambda e: (e["rank_in_layer"] is None, e["rank_in_layer"] or 0, e["expert"]))
        text = " › ".join([f"{e['expert']} ({'—' if (v := e['snr']) is None else f'{v:.4g}'})" for e in order])
        parts.append(
            f"<tr><td>{layer}</td><td>{esc(proj)}</td><td>{_fmt(members[0]['layer_median'])}</td>"
            f"<td class=rank>{esc(text)}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def write_moe_outputs(
    out_dir: Path,
    results: Iterable[Result],
    rows: Iterable[ExpertRow],
    model: str,
    table: list[dict] | None = None,
) -> list[Path]:
    """Write moe_experts.csv and moe_report.html (atomically); returns their paths. TABLE:
    ``expert_table(results, rows)`` when at hand."""
    if table is None:
        table = expert_table(results, rows)
    out_dir = Path(out_dir)
    return [
        write_atomic(out_dir / CSV_NAME, csv_text(table)),
        write_atomic(out_dir / HTML_NAME, html_text(table, model)),
    ]
