"""compare: two scans, or a scan and a published results JSON, module by module."""

import csv
import json

import pytest
from click.testing import CliRunner

import streamscan
from streamscan.cli import main
from streamscan.errors import UsageError
from tests.fixtures.synthetic import LlamaShape, write_llama
from tests.results.test_published import published


def test_compare_two_scans_ratios_ranks_overlap_and_metric_ratios(tmp_path):
    base = write_llama(tmp_path / "base", LlamaShape(layers=2), seed=0)
    tuned = write_llama(tmp_path / "tuned", LlamaShape(layers=2), seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = streamscan.scan(base, a, devices="cpu", cpu_workers=1)
    rb = streamscan.scan(tuned, b, devices="cpu", cpu_workers=1)
    paths = streamscan.compare(a, b, dest=tmp_path / "cmp", top_percent=50)
    assert [p.name for p in paths] == ["compare.csv", "compare.html"]
    rows = {r["name"]: r for r in csv.DictReader(paths[0].open())}
    sa, sb = ra.snr, rb.snr
    name = "model.layers.1.mlp.down_proj"
    assert float(rows[name]["ratio"]) == pytest.approx(sb[name] / sa[name], rel=1e-9)
    assert rows[name]["alpha_ratio"] != ""  # both kept spectra: metric ratios are there
    for t in {r["type"] for r in rows.values()}:  # ranks within each type are a permutation in each scan
        members = [r for r in rows.values() if r["type"] == t and r["rank_a"]]
        assert sorted(int(r["rank_a"]) for r in members) == list(range(1, len(members) + 1))
    text = paths[1].read_text()
    assert "in both" in text and "moved most" in text


def test_compare_a_published_scan_with_itself_overlaps_fully(tmp_path):
    res = CliRunner().invoke(main, ["compare", str(published("mixtral")), str(published("mixtral")),
                                    "--dest", str(tmp_path), "-p", "25"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert len(rows) == 1624 and all(r["rank_shift"] in ("", "0") for r in rows)
    assert all(r["selected_a"] == r["selected_b"] for r in rows)
    assert "Jaccard 1.000" in (tmp_path / "compare.html").read_text()


def test_compare_scan_against_published_needs_common_names(single_llama, tmp_path):
    out = tmp_path / "scan"
    streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    smol = published("smollm")
    names = set(json.loads(smol.read_text()))
    ours = {r.name for r in streamscan.load_results(out)[1]}
    streamscan.compare(out, smol, dest=tmp_path / "c")  # the same Llama names: the common ones are compared
    rows = list(csv.DictReader((tmp_path / "c" / "compare.csv").open()))
    assert {r["name"] for r in rows} == ours & names and rows
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"x.0.y": {"snr": 1.0, "type": "y"}}))
    with pytest.raises(UsageError, match="no module name in common"):
        streamscan.compare(out, other, dest=tmp_path / "d")
