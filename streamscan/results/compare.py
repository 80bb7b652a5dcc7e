"""compare: two scans (or a scan and a published results JSON) side by side, module by module.

- ``compare.csv``: one row per module in both: type, SNR in A and B, ratio B/A and its log2, rank within
  its type in A and in B and the shift (positive: moved up in B), selected at N% in A / B, and the B/A
  ratio of each metric both sides have (alpha, alpha_weighted, stable_rank, log_spectral_norm, entropy,
  effective_rank). Selected counts the embedding and head as the YAML does; method_a/_b: how each SNR was computed.
- ``compare.html``: the overlap of the two selections at N% (overall and per type), the modules whose
  SNR moved most, the largest rank shifts, and SNR A vs B per module (log-log, hover for the name).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from streamscan.layout import natural_key
from streamscan.records import Result
from streamscan.results.files import write_atomic
from streamscan.results.safe_text import csv_cell, esc
from streamscan.results.selection import rank_by_type, select_top

CSV_NAME, HTML_NAME = "compare.csv", "compare.html"
RATIO_METRICS = ("alpha", "alpha_weighted", "stable_rank", "log_spectral_norm", "entropy", "effective_rank")
MOVED = 30


def _ranks(results: list[Result]) -> dict[str, int]:
    return {r.name: i + 1 for members in rank_by_type(results).values() for i, r in enumerate(members)}


def _ratio(a, b) -> float | None:
    if a is None or b is None or not a or not math.isfinite(a) or not math.isfinite(b):
        return None
    ratio = b / a
    return ratio if math.isfinite(ratio) else None


def compare_rows(
    a: list[Result],
    b: list[Result],
    percent: float,
    metrics_a: dict[str, dict] | None = None,
    metrics_b: dict[str, dict] | None = None,
) -> list[dict]:
    """One row per module name in both A and B, in natural name order."""
    by_b = {r.name: r for r in b}
    rank_a, rank_b = _ranks(a), _ranks(b)
    sel_a, sel_b = set(select_top(a, percent).names()), set(select_top(b, percent).names())
    rows = []
    for ra in sorted(a, key=lambda r: natural_key(r.name)):
        rb = by_b.get(ra.name)
        if rb is None:
            continue
        ratio = _ratio(ra.snr, rb.snr)
        row = {
            "name": ra.name,
            "type": ra.type,
            "snr_a": ra.snr,
            "snr_b": rb.snr,
            "ratio": ratio,
            "log2_ratio": math.log2(ratio) if ratio and ratio > 0 else None,
            "rank_a": rank_a.get(ra.name),
            "rank_b": rank_b.get(ra.name),
            "rank_shift": rank_a[ra.name] - rank_b[ra.name] if ra.name in rank_a and ra.name in rank_b else None,
            "selected_a": ra.name in sel_a or bool(ra.role),  # the embedding and head: in every YAML
            "selected_b": ra.name in sel_b or bool(rb.role),
            "method_a": ra.method,
            "method_b": rb.method,
        }
        ma, mb = (metrics_a or {}).get(ra.name), (metrics_b or {}).get(ra.name)
        for key in RATIO_METRICS:
            row[f"{key}_ratio"] = _ratio(ma.get(key), mb.get(key)) if ma and mb else None
        rows.append(row)
    return rows


def overlap(rows: list[dict]) -> dict:
    """Selections at N% over the common modules: sizes, how many both chose, and per type."""
    a = {r["name"] for r in rows if r["selected_a"]}
    b = {r["name"] for r in rows if r["selected_b"]}
    per_type: dict[str, list[int]] = {}
    for r in rows:
        t = per_type.setdefault(r["type"], [0, 0, 0])
        t[0] += r["selected_a"]
        t[1] += r["selected_b"]
        t[2] += r["selected_a"] and r["selected_b"]
    union = len(a | b)
    return {
        "common_modules": len(rows),
        "selected_a": len(a),
        "selected_b": len(b),
        "both": len(a & b),
        "jaccard": len(a & b) / union if union else 1.0,
        "per_type": per_type,
    }


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(
            {k: "" if v is None else (f"{v:.10g}" if isinstance(v, float) else csv_cell(v)) for k, v in row.items()}
        )
    return buf.getvalue()


def _f(v) -> str:
    return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else esc(str(v))


def _scatter(rows: list[dict], label_a: str, label_b: str, size: int = 520) -> str:
    pts = [  # degenerate matrices (SNR inf) have no place on a log scale; the table lists them
        (r["snr_a"], r["snr_b"], r)
        for r in rows
        if r["snr_a"] and r["snr_b"] and 0 < r["snr_a"] < math.inf and 0 < r["snr_b"] < math.inf
    ]
    if not pts:
        return ""
    logs = [math.log10(v) for a, b, _ in pts for v in (a, b)]
    lo, hi = min(logs) - 0.05, max(logs) + 0.05
    pad = 50

    def pos(v: float) -> float:
        return pad + (math.log10(v) - lo) / (hi - lo) * (size - pad - 10)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" font-family="sans-serif" font-size="11">',
        f'<rect x="{pad}" y="10" width="{size - pad - 10}" height="{size - pad - 10}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - 10}" y2="10" stroke="#bbb" stroke-dasharray="4"/>',
        f'<text x="{(size + pad) / 2:.0f}" y="{size - 12}" text-anchor="middle">SNR in {esc(label_a)} (log)</text>',
        f'<text x="14" y="{size / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {size / 2:.0f})">'
        f"SNR in {esc(label_b)} (log)</text>",
    ]
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        out.append(f'<text x="{pos(10.0**e):.1f}" y="{size - pad + 14}" text-anchor="middle">1e{e}</text>')
        out.append(f'<text x="{pad - 4}" y="{size - pos(10.0**e) + 4:.1f}" text-anchor="end">1e{e}</text>')
    for a, b, r in pts:
        colour = "#d95f02" if r["selected_a"] != r["selected_b"] else "#7570b3"
        out.append(
            f'<circle cx="{pos(a):.1f}" cy="{size - pos(b):.1f}" r="2" fill="{colour}" fill-opacity="0.6">'
            f"<title>{esc(r['name'])}: {a:.4g} -> {b:.4g}</title></circle>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _methods(rows: list[dict], key: str) -> str:
    return ", ".join(sorted({r[key] for r in rows if r[key]})) or "unknown"


def html_text(rows: list[dict], label_a: str, label_b: str, percent: float) -> str:
    ov = overlap(rows)
    moved = sorted((r for r in rows if r["log2_ratio"]), key=lambda r: -abs(r["log2_ratio"]))[:MOVED]  # 0: unmoved
    shifted = sorted((r for r in rows if r["rank_shift"]), key=lambda r: -abs(r["rank_shift"]))[:MOVED]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>streamscan compare: {esc(label_a)} vs {esc(label_b)}</title>",
        "<style>body{font-family:sans-serif;margin:16px auto;max-width:1320px;color:#222}"
        "table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}"
        "td:first-child,th:first-child{text-align:left}h2{border-bottom:1px solid #ccc;margin-top:26px}"
        ".flex{display:flex;gap:24px;flex-wrap:wrap}</style></head><body>",
        f"<h1>A: {esc(label_a)}<br>B: {esc(label_b)}</h1>",
        f"<p>Method: A {esc(_methods(rows, 'method_a'))}, B {esc(_methods(rows, 'method_b'))}.</p>",
        f"<p>{ov['common_modules']} modules in both. Selections at {percent:g}% per type: {ov['selected_a']} in A, "
        f"{ov['selected_b']} in B, <b>{ov['both']} in both</b> (Jaccard {ov['jaccard']:.3f}).</p>",
        '<div class="flex"><div>',
        _scatter(rows, "A", "B"),
        "<p>orange: selected in one scan only</p></div><div>",
        f"<h2>Selection overlap per type at {percent:g}%</h2>",
        "<table><tr><th>type</th><th>A</th><th>B</th><th>both</th></tr>",
    ]
    for t, (sa, sb, both) in ov["per_type"].items():
        out.append(f"<tr><td>{esc(t)}</td><td>{sa}</td><td>{sb}</td><td>{both}</td></tr>")
    out.append("</table></div></div>")
    cols = ("name", "type", "snr_a", "snr_b", "ratio", "rank_a", "rank_b", "rank_shift", "alpha_ratio")
    for title, chosen in ((f"The {MOVED} modules whose SNR moved most (|log2 B/A|)", moved),
                          (f"The {MOVED} largest rank shifts within their type (positive: up in B)", shifted)):  # fmt: skip
        out.append(f"<h2>{title}</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for r in chosen:
            out.append("<tr>" + "".join(f"<td>{_f(r[c])}</td>" for c in cols) + "</tr>")
        out.append("</table>")
        if not chosen:
            out.append('<p class="note">None: no module changed here.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_compare(dest: Path, rows: list[dict], label_a: str, label_b: str, percent: float) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [
        write_atomic(dest / CSV_NAME, csv_text(rows)),
        write_atomic(dest / HTML_NAME, html_text(rows, label_a, label_b, percent)),
    ]
