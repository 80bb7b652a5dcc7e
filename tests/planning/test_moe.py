import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import streamscan
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import read_tensor
from streamscan.checkpoint.source import resolve
from streamscan.cli import main
from streamscan.planning.experts import MoeConfig, pooled_type, split_experts
from streamscan.planning.plan import make_plan
from tests.fixtures.synthetic import LlamaShape, write_llama
from tests.fixtures.synthetic_moe import (
    FAMILIES,
    MoeShape,
    expert_exponent,
    expert_matrices,
    write_moe,
)

SHAPE = MoeShape()  # 2 layers, 4 experts, hidden 32, expert ffn 24
MOE_LAYERS = {"deepseek_v3": [1]}  # first_k_dense_replace = 1
# One real name per layout: (expert 3's gate in layer 1, its router)
NAMES = {
    "mixtral": ("model.layers.1.block_sparse_moe.experts.3.w1", "model.layers.1.block_sparse_moe.gate"),
    "qwen2_moe": ("model.layers.1.mlp.experts.3.gate_proj", "model.layers.1.mlp.gate"),
    "deepseek_v3": ("model.layers.1.mlp.experts.3.gate_proj", "model.layers.1.mlp.gate"),
    "grok": ("model.layers.1.moe_block.experts.3.linear", "model.layers.1.moe_block.gate"),
    "dbrx": ("transformer.blocks.1.ffn.experts.mlp.w1[3]", "transformer.blocks.1.ffn.router.layer"),
    "llama4": (
        "language_model.model.layers.1.feed_forward.experts.gate_up_proj[3].gate",
        "language_model.model.layers.1.feed_forward.router",
    ),
    "v5_fused": ("model.layers.1.mlp.experts.gate_up_proj[3].gate", "model.layers.1.mlp.gate"),
    "gpt_oss": ("model.layers.1.mlp.experts.gate_up_proj[3].gate", "model.layers.1.mlp.router"),
}
SHARED = {"qwen2_moe": 3 * 2, "deepseek_v3": 3, "llama4": 3 * 2}


def csv_rows(out):
    with open(out / "moe_experts.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Every layout written and scanned once (about 40 small matrices each)."""
    root = tmp_path_factory.mktemp("moe")
    done = {}
    for family in FAMILIES:
        model = write_moe(root / family, family, SHAPE)
        done[family] = (model, streamscan.scan(model, root / f"{family}-scan", top_percent=[50]))
    return done


@pytest.mark.parametrize("family", FAMILIES)
def test_each_layout_splits_into_the_planted_expert_matrices(family, tmp_path):
    model = write_moe(tmp_path / family, family, SHAPE)
    plan = make_plan(build_index(resolve(model)))
    layers = MOE_LAYERS.get(family, [0, 1])
    names = {j.name for j in plan.jobs}
    expert, router = NAMES[family]
    assert expert in names and router in names
    for job in plan.jobs:
        if job.part is None:
            assert job.shape == job.tensor.shape and len(job.shape) == 2
            continue
        # a slice's name says the expert; its bytes are exactly the planted matrix (or its transpose)
        assert f"[{job.part.expert}]" in job.name and len(job.tensor.shape) in (2, 3)
        layer = int(next(p for p in job.name.split(".") if p.isdigit()))
        want = expert_matrices(SHAPE, layer, job.part.expert)[job.part.projection].to(torch.bfloat16)
        got = read_tensor(job.tensor, job.part)
        assert got.shape == job.shape and (torch.equal(got, want) or torch.equal(got, want.T)), job.name
        assert got.is_contiguous() and got.untyped_storage().nbytes() == got.numel() * 2  # owned, not a view
        assert job.cost == pytest.approx(24 * 24 * 32 + 4 / 3 * 24**3) and job.nbytes == 24 * 32 * 2
    expected_experts = len(layers) * SHAPE.experts * 3
    fused = family in ("dbrx", "llama4", "v5_fused", "gpt_oss")
    assert sum(j.part is not None for j in plan.jobs) == (expected_experts if fused else 0)
    assert not [s for s in plan.skipped if "expert" in s.reason or "config.json" in s.reason]


@pytest.mark.parametrize("family", FAMILIES)
def test_csv_recovers_the_planted_ranking_in_every_layout(family, scans):
    model, res = scans[family]
    rows = csv_rows(res.out_dir)
    experts = [r for r in rows if r["kind"] == "expert"]
    layers = MOE_LAYERS.get(family, [0, 1])
    assert len(experts) == len(layers) * SHAPE.experts * 3
    assert sum(r["kind"] == "shared" for r in rows) == SHARED.get(family, 0)
    routers = [r for r in rows if r["kind"] == "router" and r["projection"] == "router"]
    assert [int(r["layer"]) for r in routers] == layers and all(r["expert"] == "" for r in routers)
    assert {r["projection"] for r in experts} == {"gate", "up", "down"}
    for layer in layers:
        for proj in ("gate", "up", "down"):
            members = [r for r in experts if int(r["layer"]) == layer and r["projection"] == proj]
            by_rank = [int(r["expert"]) for r in sorted(members, key=lambda r: int(r["rank_in_layer"]))]
            planted = sorted(range(SHAPE.experts), key=lambda e: -expert_exponent(SHAPE, layer, e))
            assert by_rank == planted, (family, layer, proj)
    # the results JSON carries every expert matrix under a name that says its slice, with the CSV's SNR
    data = json.loads(res.paths[0].read_text())  # the results JSON
    for r in experts:
        assert data[r["name"]]["snr"] == pytest.approx(float(r["snr"]), rel=1e-9)
    if family in ("dbrx", "llama4", "v5_fused", "gpt_oss"):  # the YAML never names a slice
        yaml_text = next(res.out_dir.glob("*50percent.yaml")).read_text()
        fused = {r["tensor"] for r in experts}
        if "# parameter names of transformers" in yaml_text:  # trainer names: one dim-0 range per expert
            ranged = [line for line in yaml_text.splitlines() if line.startswith("- ") and "[" in line]
            assert ranged and all(line[4 : line.index("$[")] in fused for line in ranged)
            return
        assert not [line for line in yaml_text.splitlines() if line.startswith("- ") and "[" in line]
        whole = [line[5:-1] for line in yaml_text.splitlines() if line.startswith("# - ^")]
        assert whole and set(whole) <= fused and len(whole) == len(set(whole))


def test_slice_scores_equal_scoring_the_planted_matrix(scans):
    _, res = scans["gpt_oss"]  # interleaved gate/up: a wrong step would give another matrix
    by_name = {r.name: r for r in res.results}
    for e in range(SHAPE.experts):
        for proj in ("gate", "up"):
            want = streamscan.score(expert_matrices(SHAPE, 0, e)[proj].to(torch.bfloat16))
            got = by_name[f"model.layers.0.mlp.experts.gate_up_proj[{e}].{proj}"]
            assert got.snr == pytest.approx(want.snr, rel=1e-9) and got.shape == (SHAPE.hidden, SHAPE.ffn)


def test_report_flags_dead_and_outlier_experts_and_draws_heatmaps(tmp_path):
    shape = MoeShape(dead=(1, 2), outlier=(0, 1))
    model = write_moe(tmp_path / "mixtral", "mixtral", shape)
    res = streamscan.scan(model, tmp_path / "scan")
    rows = {(int(r["layer"]), r["expert"], r["projection"]): r for r in csv_rows(tmp_path / "scan")}
    assert rows[(1, "2", "down")]["flag"] == "dead (all-zero)" and rows[(1, "2", "down")]["snr"] == ""
    assert rows[(0, "1", "gate")]["flag"].startswith("high") and rows[(0, "1", "gate")]["rank_in_layer"] == "1"
    assert not rows[(0, "3", "gate")]["flag"]  # 2x the median: not an outlier
    page = (tmp_path / "scan" / "moe_report.html").read_text()
    svgs = page.split("<svg")[1:]
    assert len(svgs) == 3  # gate, up, down
    for svg in svgs:
        root = ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")
        rects = [
            r
            for r in root.iter("{http://www.w3.org/2000/svg}rect")
            if r.find("{http://www.w3.org/2000/svg}title") is not None
        ]
        assert len(rects) == 2 * 4  # layers x experts
    assert "dead (all-zero)" in page and "model.layers.1.block_sparse_moe.gate" in page
    assert any(p.name == "moe_report.html" for p in res.paths)


def test_groupings_select_what_they_promise(scans):
    _, res = scans["mixtral"]
    out = res.out_dir

    def experts_in(grouping):
        text = streamscan.select(out, 50, moe_grouping=grouping).read_text()
        return [line[2:] for line in text.splitlines() if line.startswith("- ") and ".experts." in line]

    top = {
        (layer, p): sorted(range(4), key=lambda e: -expert_exponent(SHAPE, layer, e)) for layer in (0, 1) for p in "123"
    }
    per_layer = experts_in("per-layer")  # 2 of 4 experts per layer and projection
    assert sorted(per_layer) == sorted(
        f"model.layers.{layer}.block_sparse_moe.experts.{e}.w{p}"
        for (layer, p), order in top.items()
        for e in order[:2]
    )
    reference = experts_in("reference")  # type = expert index and projection: the better of its 2 layers
    best_layer = {e: max((0, 1), key=lambda layer: expert_exponent(SHAPE, layer, e)) for e in range(4)}
    assert sorted(reference) == sorted(
        f"model.layers.{best_layer[e]}.block_sparse_moe.experts.{e}.w{p}" for e in range(4) for p in "123"
    )
    pooled = experts_in("pooled")  # 4 of the 8 matrices of a projection, across layers
    assert len(pooled) == 3 * 4
    assert (
        "MoE experts ranked with --moe-grouping pooled"
        in (out / "snr_results_mixtral_unfrozenparameters_50percent.yaml").read_text()
    )
    assert pooled_type("block_sparse_moe.experts.3.w1") == "block_sparse_moe.experts.*.w1"
    assert pooled_type("mlp.experts.gate_up_proj[3].gate") == "mlp.experts.gate_up_proj[*].gate"


def test_grok_prefix_trap_linear_vs_linear_1(scans):
    _, res = scans["grok"]
    text = streamscan.select(res.out_dir, 100).read_text()
    assert "- model.layers.0.moe_block.experts.0.linear.\n" in text  # not a prefix of linear_1 / linear_v
    assert "- model.layers.0.moe_block.experts.0.linear_1\n" in text
    projections = {
        (r["tensor"].rsplit(".", 2)[-2], r["projection"]) for r in csv_rows(res.out_dir) if r["kind"] == "expert"
    }
    assert projections == {("linear", "gate"), ("linear_v", "up"), ("linear_1", "down")}


@pytest.mark.parametrize(
    "family,edit,fragment,count",
    [
        ("v5_fused", {"intermediate_size": 20}, "do not match config.json", 4),
        ("v5_fused", {"num_local_experts": 8}, "config.json says 8", 4),
        ("llama4", {"text_config": {"hidden_size": 32}}, "config.json needs intermediate_size", 4),
        ("dbrx", {"ffn_config": {"ffn_hidden_size": 16, "moe_num_experts": 4}}, "do not match config.json", 6),
        ("dbrx", {"ffn_config": {}}, "needs ffn_config.moe_num_experts", 6),
    ],
)
def test_config_mismatch_is_a_one_line_skip_not_a_wrong_split(family, edit, fragment, count, tmp_path):
    model = write_moe(tmp_path / family, family, SHAPE)
    config = json.loads((model / "config.json").read_text())
    config.update(edit)
    (model / "config.json").write_text(json.dumps(config))
    plan = make_plan(build_index(resolve(model)))
    assert not [j for j in plan.jobs if j.part is not None]
    reasons = [s.reason for s in plan.skipped if fragment in s.reason]
    assert len(reasons) == count and all("\n" not in r for r in reasons)


def test_hidden_equal_to_twice_ffn_uses_the_family_convention():
    v5, llama4 = MoeConfig(4, 16, 32, "mixtral"), MoeConfig(4, 16, 32, "llama4_text")
    rows = split_experts("m.layers.0.mlp.experts.gate_up_proj", (4, 32, 32), v5)
    cols = split_experts("m.layers.0.feed_forward.experts.gate_up_proj", (4, 32, 32), llama4)
    assert rows[0][1].rows == (0, 16, 1) and rows[1][1].rows == (16, 32, 1) and rows[0][1].cols == (0, 32, 1)
    assert cols[0][1].cols == (0, 16, 1) and cols[1][1].cols == (16, 32, 1)
    oss = split_experts("m.layers.0.mlp.experts.gate_up_proj", (4, 32, 48), MoeConfig(4, 24, 32, "gpt_oss"))
    assert [p.cols for _, p in oss[:2]] == [(0, 48, 2), (1, 48, 2)]
    assert split_experts("m.layers.0.mlp.experts.gate_up_proj_bias", (4, 48), v5) is None


def test_resume_keeps_slice_names_and_report_regenerates_from_a_partial_scan(tmp_path):
    model = write_moe(tmp_path / "oss", "gpt_oss", SHAPE)
    out = tmp_path / "scan"
    first = streamscan.scan(model, out)
    full_csv = (out / "moe_experts.csv").read_text()
    journal = out / "streamscan.journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:15]))  # header + 14 results
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0 and "moe_report.html" in result.output
    assert 0 < len(csv_rows(out)) < len(full_csv.splitlines()) - 1
    second = streamscan.scan(model, out)
    assert second.summary["resumed_from_journal"] == 14 and second.summary["matrices"] == first.summary["matrices"]
    assert (out / "moe_experts.csv").read_text() == full_csv


def test_dense_models_are_unchanged_by_the_moe_options(tmp_path):
    model = write_llama(tmp_path / "llama", LlamaShape(layers=2))
    a = streamscan.scan(model, tmp_path / "a", top_percent=[50])
    streamscan.scan(model, tmp_path / "b", top_percent=[50], moe_grouping="per-layer")
    for pa in a.paths[:3]:
        assert pa.read_bytes() == (tmp_path / "b" / pa.name).read_bytes()
    assert not (tmp_path / "a" / "moe_experts.csv").exists()
    assert "experts" not in json.loads((tmp_path / "a" / "streamscan.journal.jsonl").read_text().splitlines()[0])
    result = CliRunner().invoke(main, ["report", str(tmp_path / "a")])  # every model gets report.html, no MoE files
    assert result.exit_code == 0 and result.output.strip().endswith("report.html") and "moe_" not in result.output
    with pytest.raises(streamscan.UsageError, match="no MoE experts"):
        streamscan.moe_report(tmp_path / "a")
    bad = CliRunner().invoke(main, ["select", str(tmp_path / "a"), "-p", "50", "--moe-grouping", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the high-water RSS")
def test_reading_one_expert_slice_never_loads_the_whole_fused_tensor(tmp_path):
    """Peak RSS of reading one expert's gate (2 MiB) out of a 64 MiB fused tensor, in a fresh process."""
    path = tmp_path / "fused" / "model.safetensors"
    path.parent.mkdir()
    save_file({"model.layers.0.mlp.experts.gate_up_proj": torch.randn(16, 512, 4096).to(torch.bfloat16)}, str(path))
    code = f"""
import torch
from streamscan.checkpoint.formats.safetensors import read_header
from streamscan.planning.experts import MoeConfig, split_experts
from streamscan.checkpoint.reader import read_tensor
(info,), _ = read_header(__import__("pathlib").Path({str(path)!r}))
slices = split_experts(info.name, info.shape, MoeConfig(16, 2048, 512, "llama4"))
torch.ones(512, 2048, dtype=torch.bfloat16).sum()  # warm up torch (reading the file first would set the peak)
def peak_kib():  # this process's high-water RSS (ru_maxrss would carry over pytest's peak through exec)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
base = peak_kib()
x = read_tensor(info, slices[11][1])
assert tuple(x.shape) == (512, 2048)
print((peak_kib() - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 24, out.stdout  # the whole tensor is 64 MiB (float32: 128 MiB)


def test_cli_run_writes_the_report_and_ranks_per_layer(tmp_path):
    model = write_moe(tmp_path / "dbrx", "dbrx", SHAPE)
    out = tmp_path / "scan"
    res = CliRunner().invoke(
        main, ["run", str(model), "--out", str(out), "--devices", "cpu", "-p", "50", "--moe-grouping", "per-layer"]
    )
    assert res.exit_code == 0, res.output
    assert f"per-expert report: {out / 'moe_report.html'}" in res.output
    summary = json.loads((out / "streamscan_summary.json").read_text())
    assert summary["moe"] == {"expert_matrices": 24, "shared_expert_matrices": 0, "routers": 2, "grouping": "per-layer"}
    text = (out / "snr_results_dbrx_unfrozenparameters_50percent.yaml").read_text()
    assert "# layer 1: ffn.experts.mlp.w2[*] layers" in text and '- "^transformer.blocks.1.ffn.experts.mlp.w2$[' in text
    inspect = CliRunner().invoke(main, ["inspect", str(model)])
    assert "transformer.blocks.0.ffn.experts.mlp.w2[3]" in inspect.output and "24x32" in inspect.output


def test_shards_of_a_fused_moe_merge_into_the_same_report(scans, tmp_path):
    model, whole = scans["v5_fused"]
    out = tmp_path / "split"
    for i in (0, 1):
        streamscan.scan(model, out, shard=f"{i}/2", devices="cpu")
    res = CliRunner().invoke(main, ["merge", str(out), "-p", "50", "--moe-grouping", "pooled"])
    assert res.exit_code == 0, res.output
    assert (out / "moe_experts.csv").read_text() == (whole.out_dir / "moe_experts.csv").read_text()
    text = (out / "snr_results_v5-fused_unfrozenparameters_50percent.yaml").read_text()
    assert "# mlp.experts.gate_up_proj[*].gate layers" in text


def test_the_expert_csv_quotes_fields_that_need_it():
    from streamscan.records import ExpertRow, Result
    from streamscan.results.moe_report import csv_text, expert_table

    rows = [ExpertRow(f"model.layers.1.e{i}.gate", 1, i, "gate", f"w{i}", "expert") for i in (0, 1)]
    results = [
        Result(rows[0].name, "gate", (2, 2), "F32", None, reason='a, "b"\nc', status="null"),
        Result(rows[1].name, "gate", (2, 2), "F32", 1.0),
    ]
    parsed = list(csv.DictReader(io.StringIO(csv_text(expert_table(results, rows)))))
    assert [(r["name"], r["reason"], r["snr"]) for r in parsed] == [
        (rows[0].name, 'a, "b"\nc', ""),
        (rows[1].name, "", "1"),
    ]
