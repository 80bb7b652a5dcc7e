"""Published Spectrum scans (the Spectrum repository's snr_results_*.json) as inputs, read from ../shared/published."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import streamscan
from streamscan.cli import main
from streamscan.errors import UsageError
from streamscan.results.published import load_published

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
def test_published_scans_load_with_infinity_as_degenerate(key, entries, infinite):
    header, results = load_published(published(key))
    assert len(results) == len(header.targets) == entries
    assert not [r for r in results if r.snr is None]
    inf = [r for r in results if r.snr == float("inf")]  # D2: the reference's Infinity, ranked first
    assert len(inf) == infinite and all(r.degenerate == "noise-sum-0" and r.status == "ok" for r in inf)


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
    counts = _type_counts(published("mixtral"))  # the Infinity entries (54 routers, 6 v_proj) rank first (D2)
    assert counts["self_attn.v_proj"] == 56 and counts["block_sparse_moe.gate"] == 56
    assert text.count("\n- model.layers.") == sum(int(n * 25 / 100) for n in counts.values())


def _type_counts(path: Path) -> dict:
    counts: dict = {}
    for v in json.loads(path.read_text()).values():
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


def _reference_selection(path: Path, percent: float) -> list[str]:
    """The reference's (and the Axolotl plugin's) rule, written out: group by type in file order, a stable sort
    by snr descending (``Infinity`` is +inf: first, ties in file order), the first int(n * percent / 100)."""
    by_type: dict = {}
    for name, info in json.loads(path.read_text()).items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    return [
        n
        for layers in by_type.values()
        for n, _ in sorted(layers, key=lambda x: x[1], reverse=True)[: int(len(layers) * percent / 100)]
    ]


def _yaml_names(text: str, names: set) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith("- ") and not line.startswith("- ^"):
            name = line[2:]
            out.append(name[:-1] if name.endswith(".") and name[:-1] in names else name)  # a prefix-collision dot
    return out


@pytest.mark.parametrize("key", list(FILES))
@pytest.mark.parametrize("percent", [25, 50])
def test_select_on_the_five_published_scans_matches_the_reference_rule(key, percent, tmp_path):
    path = published(key)
    names = set(json.loads(path.read_text()))
    ours = _yaml_names(streamscan.select(path, percent, dest=tmp_path).read_text(), names)
    reference = _reference_selection(path, percent)
    assert len(ours) == len(set(ours))
    assert set(ours) ^ set(reference) == set()  # 0 differences, Infinity entries included
    assert ours == reference  # and in the same order: types in file order, each ranked as the reference ranks it


def test_infinity_ties_keep_the_files_order_and_our_own_json_reads_back(tmp_path):
    path = tmp_path / "snr_results_m.json"
    path.write_text(
        '{"m.layers.10.x": {"snr": Infinity, "type": "x"}, "m.layers.2.x": {"snr": 1.5, "type": "x"},'
        ' "m.layers.3.x": {"snr": Infinity, "type": "x"}, "m.layers.1.x": {"snr": 2.5, "type": "x"}}'
    )
    text = streamscan.select(path, 75, dest=tmp_path / "sel").read_text()
    # the reference's stable sort: both Infinity first in file order (layers.10 before layers.3), then 2.5
    assert _yaml_names(text, set()) == ["m.layers.10.x", "m.layers.3.x", "m.layers.1.x"]
    assert _yaml_names(text, set()) == _reference_selection(path, 75)

    from streamscan.records import Result
    from streamscan.results.outputs import write_outputs

    ours = [
        Result("m.layers.0.x", "x", (4, 4), "F32", float("inf"), degenerate="rank-deficient"),
        Result("m.layers.1.x", "x", (4, 4), "F32", 2.0),
    ]
    (tmp_path / "own").mkdir()
    write_outputs(tmp_path / "own", "own", ours, [], [r.name for r in ours], {"model": "own"})
    _, back = load_published(tmp_path / "own" / "snr_results_own.json")
    assert [(r.name, r.snr, r.degenerate) for r in back] == [
        ("m.layers.0.x", float("inf"), "rank-deficient"),
        ("m.layers.1.x", 2.0, None),
    ]
