"""Published Spectrum scans (the Spectrum repository's snr_results_*.json) as inputs, read from ../shared/published."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import streamscan
from streamscan.cli import main
from streamscan.errors import UsageError
from streamscan.results.published import INFINITY_REASON, load_published

PUBLISHED = Path(__file__).resolve().parents[2].parent / "shared" / "published"
FILES = {
    "smollm": "snr_results_HuggingFaceTB-SmolLM-135M.json",
    "llama3": "snr_results_meta-llama-Meta-Llama-3-8B.json",
    "mixtral": "snr_results_mistralai-Mixtral-8x22B-v0.1.json",
    "qwen2moe": "snr_results_Qwen-Qwen2-MoE-57B-A14B.json",
    "dsv2": "snr_results_deepseek-ai-DeepSeek-V2.json",
}
if not PUBLISHED.is_dir():
    PUBLISHED = Path("/work/shared/published")


def published(key: str) -> Path:
    path = PUBLISHED / FILES[key]
    if not path.is_file():
        pytest.skip(f"{path} absent (published scans live outside the repository)")
    return path


@pytest.mark.parametrize(
    "key,entries,infinite", [("smollm", 273, 61), ("mixtral", 1624, 60), ("dsv2", 28800, 86), ("qwen2moe", 5628, 917)]
)
def test_published_scans_load_with_infinity_unscored(key, entries, infinite):
    header, results = load_published(published(key))
    assert len(results) == len(header.targets) == entries
    unscored = [r for r in results if r.snr is None]
    assert len(unscored) == infinite and all(r.reason == INFINITY_REASON and r.status == "null" for r in unscored)


def test_select_from_a_published_scan_matches_the_reference_rule(tmp_path):
    path = published("llama3")
    out = streamscan.select(path, 25, dest=tmp_path)
    text = out.read_text()
    raw = json.loads(path.read_text())
    by_type: dict = {}
    for name, v in raw.items():
        by_type.setdefault(v["type"], []).append((v["snr"], name))
    for members in by_type.values():
        members.sort(reverse=True)
        for i, (_, name) in enumerate(members):
            line = f"\n- {name}\n"
            assert (line in text) == (i < int(len(members) * 25 / 100)), name
    assert out.name == "snr_results_meta-llama-Meta-Llama-3-8B_unfrozenparameters_25percent.yaml"
    assert "lm_head" not in text  # this published scan has no head or embedding entries
    smol = streamscan.select(published("smollm"), 25, dest=tmp_path).read_text()
    assert "\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n" in smol  # the reference's always-unfrozen pair


def test_cli_select_takes_the_published_json_the_issue_names(tmp_path):
    res = CliRunner().invoke(main, ["select", str(published("mixtral")), "-p", "25", "--dest", str(tmp_path)])
    assert res.exit_code == 0, res.output
    text = Path(res.output.strip()).read_text()
    assert "# block_sparse_moe.experts.3.w1 layers" in text  # the reference's per-expert types
    counts = _type_counts(published("mixtral"))  # the Infinity entries (routers, 6 v_proj) are not ranked
    assert counts["self_attn.v_proj"] == 50 and counts["block_sparse_moe.gate"] == 2
    assert text.count("\n- model.layers.") == sum(int(n * 25 / 100) for n in counts.values())


def _type_counts(path: Path) -> dict:
    counts: dict = {}
    for v in json.loads(path.read_text()).values():
        if v["snr"] != float("inf"):
            counts[v["type"]] = counts.get(v["type"], 0) + 1
    return counts


@pytest.mark.parametrize("key,layers,experts", [("mixtral", 56, 8), ("dsv2", 59, 160)])
def test_per_expert_moe_report_from_a_published_scan(key, layers, experts, tmp_path):
    paths = streamscan.moe_report(published(key), dest=tmp_path)
    rows = (tmp_path / "moe_experts.csv").read_text().splitlines()
    kinds = [r.split(",") for r in rows[1:]]
    expert_rows = [r for r in kinds if "expert" in r]
    ids = {(r[0], r[1]) for r in expert_rows}
    assert len({e for _, e in ids}) == experts and len({layer for layer, _ in ids}) <= layers
    assert {p.name for p in paths} == {"moe_experts.csv", "moe_report.html"}


def test_apply_selection_accepts_a_published_json():
    import torch

    from streamscan.training.match import selection_rules

    rules = selection_rules(str(published("smollm")), 25)
    assert any(r.line.endswith("mlp.down_proj") for r in rules) and torch  # the smollm types rank as published


def test_not_a_results_json_is_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(UsageError, match="not a Spectrum results JSON"):
        load_published(bad)
