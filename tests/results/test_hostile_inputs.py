"""Hostile inputs, round 2 (issue 22): published results JSONs, a planted metrics.json, names in the HTML
and CSV outputs, metrics workers, the metrics file set, the power-law fit's bound, non-ASCII digits. Every
malformed file is one line naming the file and the entry, exit 2, never "unexpected"."""

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import streamscan
from streamscan.errors import OutputError, UsageError
from streamscan.records import Result
from streamscan.results import published as published_mod
from streamscan.results.published import NAN_REASON, load_published
from tests.cli_helpers import invoke, one_line_error
from tests.conftest import write_tensors

HOSTILE = {"model.layers.0.mlp.<!--<script>.down_proj", "model.layers.1.mlp.down\u202e_proj", "x\u200by"}


def write_published(tmp_path: Path, text: str | bytes, slug: str = "x") -> Path:
    path = tmp_path / f"snr_results_{slug}.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    return path


GOOD = {
    "model.layers.0.mlp.down_proj": {"snr": 1.5, "type": "mlp.down_proj"},
    "model.layers.1.mlp.down_proj": {"snr": 0.5, "type": "mlp.down_proj"},
}

# --- published results JSON -----------------------------------------------------------------------------------

BAD_PUBLISHED = {
    "a list": ("[1, 2]", "expected an object of modules"),
    "not JSON": ("{'a': 1", "not JSON"),
    "no snr": ('{"a": {"type": "t"}}', "entry 'a': no 'snr'"),
    "string snr": ('{"a": {"snr": "1.5"}}', "entry 'a': snr is str"),
    "bool snr": ('{"a": {"snr": true}}', "entry 'a': snr is bool"),
    "negative snr": ('{"a": {"snr": -0.5}}', "entry 'a': snr out of range"),
    "-Infinity": ('{"a": {"snr": -Infinity}}', "entry 'a': snr -Infinity"),
    "400 digits": ('{"a": {"snr": ' + "9" * 400 + "}}", "entry 'a': snr out of range"),
    "1e400": ('{"a": {"snr": 1e400}}', "entry 'a': snr out of range"),
    "5000 digits": ('{"a": {"snr": ' + "9" * 5000 + "}}", "entry 'a': snr out of range"),
    "nested 100k": ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "duplicate key": ('{"a": {"snr": 1}, "b": {"snr": 2}, "a": {"snr": 3}}', "the key 'a' appears twice"),
    "lone surrogate": ('{"a\\ud800b": {"snr": 1}}', "entry 'a\\ud800b': the name holds a lone surrogate"),
    "control character": ('{"a\\u0000b": {"snr": 1}}', "the name holds a control character"),
    "type not text": ('{"a": {"snr": 1, "type": 7}}', "entry 'a': 'type' is not plain text"),
    "not UTF-8": (b'{"a\xff": {"snr": 1}}', "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUBLISHED))
def test_a_malformed_published_json_is_one_line_naming_the_entry(tmp_path, case):
    text, fragment = BAD_PUBLISHED[case]
    path = write_published(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_published(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    for cmd in (("report", path), ("select", path, "-p", "25"), ("compare", path, path, "--dest", tmp_path / "c")):
        one_line_error(invoke(*cmd), str(path), fragment)


def test_a_published_json_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write_published(tmp_path, json.dumps(GOOD) + " " * 2048)
    monkeypatch.setattr(published_mod, "PUBLISHED_LIMIT", 1024)
    with pytest.raises(UsageError, match=r"over the 0 MiB a published results JSON may have"):
        load_published(path)


def test_published_constants_and_file_order(tmp_path):
    text = '{"b.2.x": {"snr": NaN}, "b.10.x": {"snr": Infinity}, "b.1.x": {"snr": 0.25}, "b.3.x": {"snr": null}}'
    _, results = load_published(write_published(tmp_path, text))
    assert [r.name for r in results] == ["b.2.x", "b.10.x", "b.1.x", "b.3.x"]  # the file's order
    assert results[0].reason == NAN_REASON and results[0].snr is None
    assert (results[1].snr, results[1].degenerate, results[1].status) == (math.inf, "noise-sum-0", "ok")  # D2
    assert results[2].snr == 0.25 and results[3].snr is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.dictionaries(
        st.text(max_size=12),
        st.fixed_dictionaries({}, optional={"snr": _json_values, "type": _json_values, "reason": _json_values})
        | _json_values,
        max_size=4,
    ),
    dup=st.booleans(),
)
def test_the_published_loader_loads_or_refuses_in_one_line(tmp_path, entries, dup):
    text = json.dumps(entries)  # Infinity/NaN for non-finite floats, as the reference writes them
    if dup and entries:
        first = json.dumps(next(iter(entries)))
        text = text[:-1] + ", " + first + ": 1}"
    path = write_published(tmp_path, text)
    try:
        header, results = load_published(path)
    except UsageError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        return
    assert not dup and [r.name for r in results] == list(entries)
    for r in results:
        assert (r.snr is None) == (r.status == "null")
        assert r.snr is None or (math.isfinite(r.snr) and r.snr >= 0)


def test_negative_snrs_in_a_published_moe_scan_are_refused_not_a_math_error(tmp_path):
    data = {
        f"model.layers.{i}.mlp.experts.{e}.down_proj": {"snr": -1.0 if e == 1 else 0.5, "type": "mlp.down_proj"}
        for i in range(2)
        for e in range(4)
    }
    path = write_published(tmp_path, json.dumps(data))
    one_line_error(invoke("report", path), "snr out of range")


# --- the outputs: HTML and CSV --------------------------------------------------------------------------------


def _moe_published(tmp_path: Path, names: list[str]) -> Path:
    data = {}
    for i in range(2):
        for e in range(4):
            data[f"model.layers.{i}.mlp.experts.{e}.down_proj"] = {"snr": 0.1 + e + i, "type": "mlp.experts.down_proj"}
    for k, name in enumerate(names):
        data[name] = {"snr": 0.2 + k, "type": name}
    return write_published(tmp_path, json.dumps(data), "moe")


def test_hostile_published_names_are_shown_as_text_in_every_page(tmp_path):
    path = _moe_published(tmp_path, sorted(HOSTILE))
    assert invoke("report", path, "--dest", tmp_path / "r").exit_code == 0
    assert invoke("compare", path, path, "--dest", tmp_path / "c").exit_code == 0
    for page in (tmp_path / "r" / "report.html", tmp_path / "r" / "moe_report.html", tmp_path / "c" / "compare.html"):
        text = page.read_text()
        assert "\u202e" not in text and "\u200b" not in text, page
        assert "<!--<script>" not in text, page
        assert ("&lt;!--&lt;script&gt;" in text) == (page.name != "moe_report.html"), page  # no expert: not there
    assert "down\\u202e_proj" in (tmp_path / "r" / "report.html").read_text()


def test_a_name_cannot_close_or_comment_out_the_embedded_json():
    from streamscan.results.report import html_text

    results, spectra = [], {}
    for k, name in enumerate(sorted(HOSTILE | {"model.layers.2.a</script><script>alert(1)</script>\u2028"})):
        results.append(Result(name=name, type="t", shape=(4, 4), dtype="F32", snr=1.0 + k))
        spectra[name] = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    page = html_text("m", results, 25.0, spectra=spectra)
    start = page.index('<script type="application/json" id="hist-data">') + len(
        '<script type="application/json" id="hist-data">'
    )
    block = page[start : page.index("</script>", start)]
    assert "<" not in block and ">" not in block and "&" not in block and "\u2028" not in block
    from streamscan.results.safe_text import shown

    hist = json.loads(block)
    assert set(hist) == {shown(r.name) for r in results}
    assert page.count("<script") == page.count("</script>") == 2
    assert page.rstrip().endswith("</body></html>")


FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("first", FORMULAS)
def test_csv_cells_never_start_a_formula(first):
    from streamscan.results.moe_report import csv_text
    from streamscan.results.safe_text import csv_cell

    assert csv_cell(first) == "'" + first and csv_cell("model.x") == "model.x" and csv_cell(-1.5) == -1.5
    row = {
        "layer": 0, "expert": 1, "projection": first, "tensor": first, "snr": -0.5, "kind": "expert", "name": first,
        "rank_in_layer": 1, "layer_median": 1.0, "ratio_to_median": -0.5, "flag": "", "reason": first,
    }  # fmt: skip
    cells = [c for r in csv.reader(io.StringIO(csv_text([row]), newline="")) for c in r]
    assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in cells)
    assert "-0.5" in cells  # numbers stay numbers


def test_hostile_names_reach_the_moe_csv_as_text(tmp_path):
    path = _moe_published(tmp_path, ["=cmd|' /C calc'!A0.layers.0.mlp.experts.7.down_proj"])
    assert invoke("report", path, "--dest", tmp_path / "r").exit_code == 0
    for row in csv.reader((tmp_path / "r" / "moe_experts.csv").open(newline="")):
        assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in row), row


def test_heatmap_cells_of_zero_and_infinite_snr():
    from streamscan.results.moe_report import heatmap_svg

    entries = [
        {"layer": 0, "expert": e, "snr": s, "name": f"l.0.e.{e}", "flag": ""}
        for e, s in enumerate([0.0, math.inf, 0.5, 2.0, None])
    ]
    svg = heatmap_svg(entries, "down")
    assert svg.count("<rect") >= 5 and "nan" not in svg


# --- metrics.json -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    from tests.fixtures.synthetic import LlamaShape, write_llama

    root = tmp_path_factory.mktemp("scanned")
    model = write_llama(root / "m", LlamaShape(layers=2, tied=True))
    out = root / "out"
    streamscan.scan(model, out, devices="cpu", cpu_workers=1)
    assert invoke("metrics", out, "--workers", "1").exit_code == 0
    return out


def _copy(scanned, tmp_path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scanned, out, symlinks=True)
    return out


def _planted_metrics(scanned) -> dict:
    return json.loads((scanned / "metrics.json").read_text())


def _one(rows: dict, **change) -> str:
    name = next(iter(rows))
    rows[name].update(change)
    return json.dumps(rows)


BAD_METRICS = {
    "a list": (lambda rows: json.dumps(list(rows.values())), "not an object of rows"),
    "not JSON": (lambda rows: "{not json", "not JSON"),
    "missing type": (
        lambda rows: json.dumps({k: {f: v for f, v in r.items() if f != "type"} for k, r in rows.items()}),
        "no 'type' text",
    ),  # fmt: skip
    "string value": (lambda rows: _one(rows, alpha="2.5"), "'alpha': a number or null expected, not str"),
    "layer 10^300": (lambda rows: _one(rows, layer=10**300), "'layer' is not an integer"),
    "float layer": (lambda rows: _one(rows, layer=1.5), "'layer' is not an integer"),
    "infinite": (lambda rows: _one(rows, stable_rank=float("inf")), "'stable_rank': not a finite number"),
    "duplicate key": (
        lambda rows: json.dumps(rows)[:-1] + ", " + json.dumps(next(iter(rows))) + ": {}}",
        "appears twice",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_a_planted_metrics_json_is_one_line_naming_the_file(scanned, tmp_path, case):
    out = _copy(scanned, tmp_path)
    make, fragment = BAD_METRICS[case]
    (out / "metrics.json").write_text(make(_planted_metrics(scanned)))
    one_line_error(invoke("report", out), "metrics.json", fragment, "rerun `streamscan metrics`")
    one_line_error(invoke("compare", out, out, "--dest", tmp_path / "c"), "metrics.json", fragment)


def test_a_metrics_json_symlink_is_never_read(scanned, tmp_path):
    out = _copy(scanned, tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    os.symlink(elsewhere, out / "metrics.json")
    one_line_error(invoke("report", out), "metrics.json", "symlink")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["type", "layer", "alpha", "m", "ww_eligible", "matrix_rank", "name", "status"]),
    value=_json_values,
)
def test_the_metrics_json_reader_reads_or_refuses_in_one_line(scanned, tmp_path, field, value):
    from streamscan.results.metrics_table import read_metrics_json

    rows = _planted_metrics(scanned)
    path = tmp_path / f"m{abs(hash((field, repr(value))))}.json"
    path.write_text(_one(rows, **{field: value}))
    try:
        got = read_metrics_json(path)
    except UsageError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        return
    assert len(got) == len(rows)


def test_a_full_disk_during_metrics_leaves_the_old_set_whole(scanned, tmp_path, monkeypatch):
    from streamscan.results import files
    from streamscan.results.metrics_table import NAMES, write_metrics

    out = _copy(scanned, tmp_path)
    old = {n: (out / n).read_bytes() for n in NAMES.values()}
    for n in NAMES.values():
        (out / n).write_bytes(b"old " + n.encode())
    old = {n: (out / n).read_bytes() for n in NAMES.values()}
    real, calls = files._create_temp, []

    def full(path):  # the third file's writes fail as on a full disk (/dev/full: ENOSPC)
        calls.append(path)
        if len(calls) == 3:
            return os.open("/dev/full", os.O_WRONLY), path.with_name(".never-made.tmp")
        return real(path)

    monkeypatch.setattr(files, "_create_temp", full)
    _, results = streamscan.load_results(out)
    with pytest.raises(OutputError, match="no space left"):
        write_metrics(out, results, workers=1)
    assert {n: (out / n).read_bytes() for n in NAMES.values()} == old
    assert not list(out.glob(".*.tmp"))


# --- processes, the fit's bound, digits -------------------------------------------------------------------------


def test_metrics_workers_die_with_a_killed_command(tmp_path):
    psutil = pytest.importorskip("psutil")
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(64, 700, generator=g) for i in range(96)}
    model = write_tensors(tmp_path / "m" / "model.safetensors", tensors).parent
    out = tmp_path / "out"
    streamscan.scan(model, out, devices="cpu", cpu_workers=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    code = "import sys; from streamscan.cli import main; sys.argv[0] = 'streamscan'; main()"
    cmd = [sys.executable, "-c", code, "metrics", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    workers: list = []
    for _ in range(1500):  # until both workers have started working
        workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        if len(workers) >= 2 and all(c.cpu_times().user > 0.3 for c in workers):
            break
        time.sleep(0.02)
    assert len(workers) >= 2, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived their command: {alive}"


def test_the_power_law_fit_is_bounded():
    from streamscan.compute.metrics import MAX_EVALS, MAX_XMINS, power_law, xmin_candidates

    assert len(xmin_candidates(MAX_EVALS + 1)) == MAX_EVALS  # every candidate WeightWatcher tries
    assert len(xmin_candidates(200_000)) <= MAX_XMINS
    s = np.random.default_rng(0).random(200_000) * 10 + 0.01
    fit = power_law(s)
    assert fit.alpha is not None and fit.alpha > 1 and fit.xmin in set((s * s).tolist())


def test_a_non_ascii_digit_in_a_layer_index_is_a_name_not_a_number(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.layers.\u00b2.mlp.down_proj.weight": torch.randn(16, 32, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(16, 32, generator=g),
    }
    model = write_tensors(tmp_path / "m" / "model.safetensors", tensors).parent
    res = invoke("run", model, "--out", tmp_path / "out", "-q", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert invoke("report", tmp_path / "out").exit_code == 0


def test_the_metrics_snr_column_is_the_scans_own_snr_with_its_rank_floor(tmp_path):
    from tests.conftest import planted

    g = torch.Generator().manual_seed(1)
    tensors = {
        "model.layers.0.mlp.down_proj.weight": torch.randn(64, 48, generator=g),
        "model.layers.1.mlp.down_proj.weight": planted(64, 48, [5.0, 4.0, 3.0, 2.0, 1.0]),  # rank 5 of 48
    }
    model = write_tensors(tmp_path / "m" / "model.safetensors", tensors).parent
    out = tmp_path / "out"
    res = streamscan.scan(model, out, devices="cpu", cpu_workers=1)
    assert invoke("metrics", out, "--workers", "1").exit_code == 0
    rows = json.loads((out / "metrics.json").read_text())
    by_name = {r.name: r for r in res.results}
    full, deficient = "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"
    assert rows[full]["snr"] == pytest.approx(by_name[full].snr, rel=1e-12)
    assert by_name[deficient].snr is None or math.isinf(by_name[deficient].snr)  # below the floor: no noise
    assert rows[deficient]["snr"] is None  # not a huge number from rounding noise
