"""The fast paths of the MoE and HTML reports equal the plain code they replaced, byte for byte."""

import math
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.api import load_results, report
from streamscan.layout import layer_index, natural_key
from streamscan.records import ExpertRow, Result
from streamscan.results import moe_report as m
from streamscan.results import report as rp
from tests.test_scaling import scan_dir


def old_expert_table(results, rows):
    """expert_table before the key-list sort (moe_report.py at 2a69d5e)."""
    by_name = {r.name: r for r in results}
    table = []
    for row in rows:
        res = by_name.get(row.name)
        if res is None:
            continue
        table.append(
            {
                "layer": row.layer, "expert": row.expert, "projection": row.projection, "tensor": row.tensor,
                "snr": res.snr, "kind": row.kind, "name": row.name, "rank_in_layer": None, "layer_median": None,
                "ratio_to_median": None, "flag": "", "reason": res.reason or "",
            }
        )  # fmt: skip
    groups = {}
    for entry in table:
        if entry["kind"] == "expert":
            groups.setdefault((entry["layer"], entry["projection"]), []).append(entry)
    for members in groups.values():
        scored = sorted((e for e in members if e["snr"] is not None), key=lambda e: (-e["snr"], e["expert"]))
        median = statistics.median(e["snr"] for e in scored) if scored else None
        for rank, e in enumerate(scored, start=1):
            e["rank_in_layer"] = rank
        for e in members:
            e["layer_median"] = median
            if median and e["snr"] is not None:
                e["ratio_to_median"] = e["snr"] / median
            e["flag"] = m._flag(e["snr"], e["reason"], median)
    for e in table:
        if e["kind"] != "expert":
            e["flag"] = m._flag(e["snr"], e["reason"], None)
    table.sort(
        key=lambda e: (
            e["layer"] if e["layer"] is not None else -1, m.KIND_ORDER[e["kind"]],
            m.PROJECTION_ORDER.get(e["projection"], 9), e["projection"],
            e["expert"] if isinstance(e["expert"], int) else 1 << 30, natural_key(e["name"]),
        )
    )  # fmt: skip
    return table


def old_snr_by_depth_svg(ptype, results, chosen, percent, width):
    pts = [(layer_index(r.name), r) for r in results if r.snr is not None and r.snr > 0]
    pts = [(lay, r) for lay, r in pts if lay is not None]
    layers = [lay for lay, _ in pts] or [0]
    lo, hi = rp._range([r.snr for _, r in pts], True)
    ax = rp._Axes(width, 240, min(layers) - 0.5, max(layers) + 0.5, lo, hi, True, ptype, "layer", "SNR (log)")
    for lay, r in sorted(pts, key=lambda p: p[1].name in chosen):
        sel = r.name in chosen
        ax.parts.append(
            f'<circle cx="{ax.x(lay):.1f}" cy="{ax.y(r.snr):.1f}" r="{3.2 if sel else 2.4}" '
            f'fill="{rp.SELECTED if sel else rp.OTHER}" fill-opacity="{0.95 if sel else 0.55}">'
            f"<title>{rp._esc(r.name)}: SNR {r.snr:.4g}{' (selected at ' + format(percent, 'g') + '%)' if sel else ''}"
            "</title></circle>"
        )
    return ax.svg()


TEXT = st.text(alphabet="ab,\"'<>&\n\r .x", max_size=6)
SNR = st.none() | st.just(0.0) | st.floats(1e-6, 1e6) | st.sampled_from([1.0, 2.0, 0.25])
ROWS = st.lists(
    st.tuples(
        st.integers(0, 3) | st.none(),
        st.integers(0, 4) | st.sampled_from(["shared", ""]),
        st.sampled_from(["gate", "up", "down", "router", "w,1"]),
        st.sampled_from(["expert", "expert", "shared", "router"]),
        SNR,
        TEXT,
    ),
    max_size=30,
)


def build(rows):
    experts, results = [], []
    for i, (layer, expert, proj, kind, snr, reason) in enumerate(rows):
        if kind != "expert" or not isinstance(expert, int):  # an index for a routed expert only
            expert = {"shared": "shared", "router": ""}.get(kind, 0)
        name = f"model.layers.{layer}.e{expert}.{proj}{i % 3}{'&<' if i == 4 else ''}"
        if any(e.name == name for e in experts):
            continue
        experts.append(ExpertRow(name, layer, expert, proj, name + ".weight", kind))
        status = "ok" if snr is not None else "null"
        results.append(
            Result(name, proj, (2, 2), "F32", snr, reason=reason or None if snr is None else None, status=status)
        )
    return results, experts


@settings(max_examples=300, deadline=None)
@given(ROWS)
def test_expert_table_csv_and_heatmap_cells_equal_the_old_code(rows):
    results, experts = build(rows)
    table = m.expert_table(results, experts)
    assert table == old_expert_table(results, experts)
    assert [e["name"] for e in table] == [e["name"] for e in old_expert_table(results, experts)]
    assert m.csv_text(table) == m._csv_text(table)
    cells = [e for e in table if e["kind"] in ("expert", "shared")]
    logs = [math.log(e["snr"]) for e in cells if e["snr"]]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    col = {x: i for i, x in enumerate(sorted({str(e["expert"]) for e in cells}))}
    row = {x: i for i, x in enumerate(sorted({e["layer"] for e in cells}, key=lambda x: -1 if x is None else x))}
    col = {e["expert"]: col[str(e["expert"])] for e in cells}
    for cw, ch, gap in ((3.1, 3.0, 0), (12.5, 9.25, 1)):
        old = [m._cell(e, 64 + col[e["expert"]] * cw, 40 + row[e["layer"]] * ch, cw, ch, gap, lo, hi) for e in cells]
        assert m._cells(cells, col, row, 64, 40, cw, ch, gap, lo, hi) == old
        cache = m.CellCache()
        for _ in range(2):  # drawn, then from the cache
            assert m._cells(cells, col, row, 64, 40, cw, ch, gap, lo, hi, cache) == old


def test_csv_falls_back_to_csv_where_a_field_needs_quoting():
    results, experts = build([(1, 0, "gate", "expert", None, 'a, "b"\nc'), (1, 1, "gate", "expert", 1.0, "")])
    table = m.expert_table(results, experts)
    text = m.csv_text(table)
    assert text == m._csv_text(table) and '"a, ""b""\nc"' in text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5) | st.none(), st.sampled_from(["q", "k", "x&<'\"y"]), SNR, st.booleans()),
        max_size=20,
    ),
    st.sampled_from([25.0, 12.5]),
)
def test_snr_by_depth_equals_the_old_chart(points, percent):
    results, chosen = [], set()
    for i, (layer, leaf, snr, sel) in enumerate(points):
        name = f"model.layers.{layer}.{leaf}{i}" if layer is not None else f"{leaf}{i}"
        results.append(Result(name, leaf, (2, 2), "F32", snr, status="ok" if snr is not None else "null"))
        if sel:
            chosen.add(name)
    layers = {r.name: layer_index(r.name) for r in results}
    old = old_snr_by_depth_svg("t", results, chosen, percent, 648)
    assert rp.snr_by_depth_svg("t", results, chosen, percent, 648) == old
    assert rp.snr_by_depth_svg("t", results, chosen, percent, 648, layers) == old


def test_report_pages_with_a_shared_table_and_cells_equal_those_drawn_alone(tmp_path):
    out = scan_dir(tmp_path, 700)
    header, results = load_results(out)
    alone_report = rp.html_text(header.model, results, 25.0, experts=header.experts)
    table = m.expert_table(results, header.experts)
    alone_moe = m.html_text(table, header.model)
    paths = report(out)  # one table, one CellCache for both pages
    assert (out / rp.REPORT_NAME).read_text() == alone_report
    assert (out / m.HTML_NAME).read_text() == alone_moe
    assert (out / m.CSV_NAME).read_text() == m._csv_text(old_expert_table(results, header.experts))
    assert {p.name for p in paths} == {rp.REPORT_NAME, m.HTML_NAME, m.CSV_NAME}
    assert alone_moe.count("<rect") > 600
