"""report: one self-contained HTML page for any scan (dense or MoE, or a published results JSON).

``report.html`` (inline SVG and a few lines of script, no external assets):
- SNR by depth per type (experts of all indices pooled in one chart per projection), the top N% per
  reference type marked;
- metric curves by depth (median per layer) when metrics are at hand (``metrics.json``, or computed from
  the kept spectra);
- the eigenvalue histogram (log10 of s**2) of any matrix, picked from a list, with Spectrum's
  Marchenko-Pastur threshold, from the kept spectra;
- MoE heatmaps (layers x experts per projection) scaled to the page: at 256 experts a cell is a few pixels
  wide, every k-th layer is labelled, the colour bar sits below with its labels inside the picture, and
  each cell names its matrix and SNR on hover.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path

from streamscan.compute.metrics import mp_threshold
from streamscan.layout import layer_index, natural_key
from streamscan.planning.experts import pooled_type
from streamscan.records import ExpertRow, Result
from streamscan.results.files import write_atomic
from streamscan.results.moe_report import expert_table, heatmap_svg
from streamscan.results.safe_text import esc, script_json, shown
from streamscan.results.selection import natural_order, rank_ordered, select_ranked

REPORT_NAME = "report.html"
PAGE_WIDTH = 1320  # content width in px (fits a 1400 px window)
HIST_BINS = 40
LEGEND = 170  # px right of a curve chart for its legend
SELECTED, OTHER = "#d95f02", "#7570b3"
CURVES = ("alpha", "alpha_weighted", "stable_rank", "log_spectral_norm", "entropy", "mp_softrank")
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4"]


_esc = esc  # names shown as what they are, HTML-escaped (results/safe_text.py)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class _Axes:
    """A plot area with a linear x axis and a linear or log y axis, drawn into an SVG string."""

    def __init__(self, width, height, xlo, xhi, ylo, yhi, log_y, title, xlabel, ylabel, right=12):
        self.w, self.h, self.log = width, height, log_y
        self.left, self.right, self.top, self.bottom = 62, right, 26, 36
        if xhi - xlo < 2:  # one layer: a little room either side
            xlo, xhi = xlo - 1, xhi + 1
        self.xlo, self.xhi = xlo, xhi
        f = math.log10 if log_y else (lambda v: v)
        self.ylo, self.yhi = f(ylo), f(yhi)
        if self.yhi <= self.ylo:
            self.ylo, self.yhi = self.ylo - 0.5, self.yhi + 0.5
        self.f = f
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" font-family="sans-serif" font-size="11">',
            f'<text x="{self.left}" y="15" font-weight="bold">{_esc(title)}</text>',
            f'<text x="{self.left + (width - self.left - self.right) / 2:.0f}" y="{height - 4}" '
            f'text-anchor="middle">{_esc(xlabel)}</text>',
            f'<text x="12" y="{self.top + (height - self.top - self.bottom) / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {self.top + (height - self.top - self.bottom) / 2:.0f})">{_esc(ylabel)}</text>',
        ]
        self._axes()

    def x(self, v: float) -> float:
        return self.left + (v - self.xlo) / (self.xhi - self.xlo) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        t = (self.f(v) - self.ylo) / (self.yhi - self.ylo)
        return self.h - self.bottom - t * (self.h - self.top - self.bottom)

    def _axes(self) -> None:
        x0, x1, y0, y1 = self.left, self.w - self.right, self.top, self.h - self.bottom
        p = self.parts
        p.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#999"/>')
        for t in [t for t in _ticks(self.xlo, self.xhi, 8) if t == int(t)]:  # layers are whole numbers
            p.append(f'<text x="{self.x(t):.1f}" y="{y1 + 13}" text-anchor="middle">{_fmt(t)}</text>')
        if self.log:
            lo, hi = math.floor(self.ylo), math.ceil(self.yhi)
            step = max(1, (hi - lo) // 5)
            ticks = [10.0**e for e in range(lo, hi + 1, step) if self.ylo <= e <= self.yhi]
            if len(ticks) < 3:  # less than a few decades: plain ticks between the ends
                ticks = [t for t in _ticks(10**self.ylo, 10**self.yhi, 4) if t > 0]
        else:
            ticks = _ticks(self.ylo, self.yhi)
        for t in ticks:
            yy = self.y(t)
            p.append(f'<line x1="{x0}" x2="{x1}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            p.append(f'<text x="{x0 - 4}" y="{yy + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')

    def svg(self) -> str:
        return "\n".join(self.parts + ["</svg>"])


def _range(values: list[float], log: bool) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if log:
        return lo / 1.15, hi * 1.15
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def snr_by_depth_svg(
    ptype: str,
    results: list[Result],
    chosen: set[str],
    percent: float,
    width: int,
    layers: Mapping[str, int | None] | None = None,
) -> str:
    """SNR against layer for RESULTS (one pooled type), CHOSEN marked; LAYERS: ``layer_index`` of every
    name when at hand. A point's x is formatted once per layer."""
    where = layers.__getitem__ if layers is not None else layer_index
    pts = [(where(r.name), r) for r in results if r.snr is not None and 0 < r.snr < math.inf]  # inf: flagged list
    pts = [(lay, r) for lay, r in pts if lay is not None]
    lays = [lay for lay, _ in pts] or [0]
    lo, hi = _range([r.snr for _, r in pts], True)
    ax = _Axes(width, 240, min(lays) - 0.5, max(lays) + 0.5, lo, hi, True, ptype, "layer", "SNR (log)")
    picked = f'" r="3.2" fill="{SELECTED}" fill-opacity="0.95"><title>'
    other = f'" r="2.4" fill="{OTHER}" fill-opacity="0.55"><title>'
    note = " (selected at " + format(percent, "g") + "%)"
    xs: dict[int, str] = {}
    append, y = ax.parts.append, ax.y
    for lay, r in sorted(pts, key=lambda p: p[1].name in chosen):
        name, snr = r.name, r.snr
        sel = name in chosen
        cx = xs.get(lay)
        if cx is None:
            cx = xs[lay] = f'<circle cx="{ax.x(lay):.1f}" cy="'
        name = _esc(name)
        append(f"{cx}{y(snr):.1f}{picked if sel else other}{name}: SNR {snr:.4g}{note if sel else ''}</title></circle>")
    return ax.svg()


def curves_svg(metric: str, rows: list[dict], width: int) -> str | None:
    series: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        v, lay = row.get(metric), row.get("layer")
        if v is None or lay is None or not math.isfinite(v):
            continue
        series.setdefault(pooled_type(row["type"]), {}).setdefault(lay, []).append(v)
    if not series:
        return None
    meds = {t: sorted((lay, statistics.median(vs)) for lay, vs in by.items()) for t, by in series.items()}
    xs = [lay for pts in meds.values() for lay, _ in pts]
    lo, hi = _range([v for pts in meds.values() for _, v in pts], False)
    ax = _Axes(width, 260, min(xs) - 0.5, max(xs) + 0.5, lo, hi, False, f"{metric} by depth (median per layer)",
               "layer", metric, right=LEGEND)  # fmt: skip
    for i, (t, pts) in enumerate(sorted(meds.items())):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{ax.x(lay):.1f},{ax.y(v):.1f}" for lay, v in pts)
        ax.parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6">'
                        f"<title>{_esc(t)}</title></polyline>")  # fmt: skip
        label = t if len(t) <= 26 else "…" + t[-25:]
        ax.parts.append(f'<text x="{width - LEGEND + 6}" y="{34 + 12 * i}" fill="{colour}">{_esc(label)}</text>')
    return ax.svg()


def histograms(spectra: dict, results: list[Result]) -> dict[str, list]:
    """Per matrix: [log10 eigenvalue low, high, log10 MP threshold on s**2 (or null), bin counts...]."""
    import numpy as np

    out = {}
    shapes = {r.name: r.shape for r in results}
    for name in sorted(spectra, key=natural_key):  # keyed by the name as shown (the picker's option text)
        shape = shapes.get(name)
        if shape is None or len(shape) != 2:
            continue
        s = spectra[name].numpy()
        ev = s[s > 0] ** 2
        if not len(ev):
            continue
        lev = np.log10(ev)
        lo, hi = float(lev.min()), float(lev.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        counts = np.histogram(lev, bins=HIST_BINS, range=(lo, hi))[0]
        thr = mp_threshold(np.sort(s)[::-1], tuple(shape))
        out[shown(name)] = [
            round(lo, 4),
            round(hi, 4),
            round(2 * math.log10(thr), 4) if thr > 0 else None,
            *counts.tolist(),
        ]
    return out


_SCRIPT = """
const H = JSON.parse(document.getElementById('hist-data').textContent);
const pick = document.getElementById('hist-pick');
function drawHist(name) {
  const d = H[name]; const box = document.getElementById('hist');
  if (!d) { box.textContent = 'no spectrum kept for ' + name; return; }
  const lo = d[0], hi = d[1], thr = d[2], c = d.slice(3), W = 900, Ht = 260, L = 56, B = 34, T = 24;
  const mx = Math.max(...c, 1), bw = (W - L - 12) / c.length;
  const x = v => L + (v - lo) / (hi - lo) * (W - L - 12);
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${Ht}" font-family="sans-serif" font-size="11">`;
  s += `<text x="${L}" y="15" font-weight="bold">eigenvalues of ${name.replace(/[<>&]/g, '')}</text>`;
  c.forEach((n, i) => { const h = n / mx * (Ht - T - B);
    s += `<rect x="${L + i * bw}" y="${Ht - B - h}" width="${Math.max(bw - 1, 1)}" height="${h}" fill="#7570b3">` +
         `<title>${n} eigenvalues</title></rect>`; });
  const step = Math.max(1, Math.ceil((hi - lo) / 6)); let ticks = [];  // whole decades, 1e-3 .. 1e2
  for (let e = Math.ceil(lo); e <= hi; e += step) ticks.push(e);
  if (ticks.length < 2) ticks = [lo, (lo + hi) / 2, hi];  // less than a decade: the ends and the middle
  ticks.forEach(v => { const a = x(v) < L + 24 ? 'start' : x(v) > W - 48 ? 'end' : 'middle';
    const t = Number.isInteger(v) ? `1e${v}` : (10 ** v).toExponential(1);
    s += `<text x="${x(v)}" y="${Ht - B + 14}" text-anchor="${a}">${t}</text>`; });
  s += `<text x="${L + (W - L) / 2}" y="${Ht - 4}" text-anchor="middle">eigenvalue s\u00b2 (log scale)</text>`;
  s += `<text x="14" y="${Ht / 2}" text-anchor="middle" transform="rotate(-90 14 ${Ht / 2})">count</text>`;
  if (thr !== null && thr >= lo && thr <= hi) {
    s += `<line x1="${x(thr)}" x2="${x(thr)}" y1="${T}" y2="${Ht - B}" stroke="#d95f02" stroke-width="2"/>`;
    s += `<text x="${x(thr) + 4}" y="${T + 10}" fill="#d95f02">MP threshold (Spectrum)</text>`;
  } else if (thr !== null) { s += `<text x="${W - 12}" y="${T + 10}" text-anchor="end" fill="#d95f02">` +
    `MP threshold 1e${thr.toFixed(2)} outside the range</text>`; }
  box.innerHTML = s + '</svg>';
}
if (pick) { pick.addEventListener('change', () => drawHist(pick.value)); drawHist(pick.value); }
"""


def html_text(
    model: str,
    results: list[Result],
    percent: float,
    experts: Iterable[ExpertRow] = (),
    metric_rows: list[dict] | None = None,
    spectra: dict | None = None,
    source: str = "",
    table: list[dict] | None = None,
) -> str:
    """The page; TABLE: ``expert_table(results, experts)`` when at hand."""
    results = list(results)
    ordered = natural_order(results)
    chosen = set(select_ranked(results, rank_ordered(ordered), percent).names())
    chosen |= {r.name for r in results if r.role}  # the embedding and head: in every YAML, whatever their SNR
    scored = [r for r in results if r.snr is not None]
    layers = {r.name: layer_index(r.name) for r in results}
    pooled_of: dict[str, str] = {}  # type -> pooled type (a few dozen types)
    pooled: dict[str, list[Result]] = {}
    for r in ordered:
        if layers[r.name] is not None:
            ptype = pooled_of.get(r.type)
            if ptype is None:
                ptype = pooled_of[r.type] = pooled_type(r.type)
            pooled.setdefault(ptype, []).append(r)
    half = (PAGE_WIDTH - 24) // 2
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>streamscan report: {_esc(model)}</title>",
        f"<style>body{{font-family:sans-serif;margin:16px auto;max-width:{PAGE_WIDTH}px;color:#222}}"
        ".grid{display:flex;flex-wrap:wrap;gap:12px}.grid svg{border:1px solid #ddd;background:#fff}"
        "svg{max-width:100%;height:auto}h2{margin-top:28px;border-bottom:1px solid #ccc}"
        ".note{color:#555}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}"
        "</style></head><body>",
        f"<h1>{_esc(model)}</h1>",
        f'<p class="note">{len(results)} matrices, {len(scored)} with an SNR; '
        f"the top {percent:g}% per type (the reference's rule) marked "
        f'<b style="color:{SELECTED}">orange</b>; {len(chosen)} selected (with the embedding and head, as in '
        f"the YAML). Method: {_esc(', '.join(sorted({r.method for r in results if r.method})) or 'unknown')}. "
        f"{_esc(source)}</p>",
        f"<h2>SNR by depth per type (top {percent:g}% marked)</h2>",
        '<div class="grid">',
    ]
    for ptype, members in pooled.items():
        out.append(snr_by_depth_svg(ptype, members, chosen, percent, half, layers))
    out.append("</div>")
    flat = [r for r in results if layers[r.name] is None]
    if flat:
        out.append("<h3>Matrices outside the layers</h3><table><tr><th>name</th><th>SNR</th><th>selected</th></tr>")
        for r in flat:
            snr = "—" if r.snr is None else f"{r.snr:.4g}"
            out.append(
                f"<tr><td>{_esc(r.name)}</td><td>{snr}</td><td>{'yes' if r.name in chosen or r.role else ''}</td></tr>"
            )
        out.append("</table>")
    out += degenerate_list(ordered, chosen)
    out.append("<h2>Metric curves</h2>")
    if metric_rows:
        out.append('<div class="grid">')
        for metric in CURVES:
            svg = curves_svg(metric, metric_rows, half)
            if svg:
                out.append(svg)
        out.append("</div>")
    else:
        out.append('<p class="note">No metrics: the scan kept no spectra (or this is a published results JSON).</p>')
    out.append("<h2>Eigenvalue histograms</h2>")
    hist = histograms(spectra, results) if spectra else {}
    if hist:
        best = max((r for r in scored if shown(r.name) in hist), key=lambda r: r.snr, default=None)
        first = shown(best.name) if best else next(iter(hist))
        options = "".join(f"<option{' selected' if n == first else ''}>{_esc(n)}</option>" for n in hist)
        out.append(f'<p><label>matrix <select id="hist-pick">{options}</select></label> '
                   '<span class="note">(orange line: Spectrum\'s Marchenko-Pastur threshold, squared)</span></p>')  # fmt: skip
        out.append('<div id="hist"></div>')
        data = script_json(hist)  # no name can close the block or open a comment in it
        out.append(f'<script type="application/json" id="hist-data">{data}</script>')
    else:
        out.append('<p class="note">No spectra kept (run the scan without --no-spectra).</p>')
    if table is None:
        table = expert_table(results, experts) if experts else []
    moe = [e for e in table if e["kind"] in ("expert", "shared")]
    if moe:
        out.append("<h2>MoE experts: SNR per layer and expert</h2>")
        for proj in sorted({e["projection"] for e in moe}):
            out.append(heatmap_svg([e for e in moe if e["projection"] == proj], f"{proj} projection", PAGE_WIDTH))
    out.append(f"<script>{_SCRIPT}</script>" if hist else "")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def degenerate_list(ordered: list[Result], chosen: set[str]) -> list[str]:
    """The flagged degenerate matrices (SNR inf, ranked first in their type; D2), in ranking order."""
    flagged = [r for r in ordered if r.snr == math.inf]
    if not flagged:
        return []
    out = [
        f"<h2>Degenerate matrices ({len(flagged)})</h2>",
        '<p class="note">SNR infinite, ranked first in their type as the reference ranks them: noise-sum-0 = no '
        "singular value at or below the threshold (the reference's <code>Infinity</code>), rank-deficient = "
        "everything below it is rounding error (the reference: a huge finite SNR). Among themselves in name order "
        "(a published scan: file order).</p>",
        "<table><tr><th>name</th><th>type</th><th>kind</th><th>selected</th></tr>",
    ]
    for r in flagged:
        kind = r.degenerate or "noise-sum-0"  # a published Infinity
        out.append(
            f"<tr><td>{_esc(r.name)}</td><td>{_esc(r.type)}</td><td>{kind}</td>"
            f"<td>{'yes' if r.name in chosen else ''}</td></tr>"
        )
    out.append("</table>")
    return out


def write_report(out_dir: Path, model: str, results: list[Result], percent: float, **kw) -> Path:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_atomic(Path(out_dir) / REPORT_NAME, html_text(model, results, percent, **kw))
