import json
import math
import sys
from dataclasses import replace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.records import Result
from streamscan.results.outputs import results_json, sorted_json, write_outputs
from streamscan.results.selection import module_pattern, select_top, yaml_text


def r(name, type_, snr, role=None, reason=None):
    return Result(
        name=name,
        type=type_,
        shape=(8, 8),
        dtype="BF16",
        snr=snr,
        reason=reason,
        status="ok" if snr is not None else "null",
        role=role,
    )


RESULTS = [
    r("transformer.wte", "transformer.wte", 3.0, role="embedding"),
    r("lm_head", "lm_head", 2.0, role="head"),
    *[r(f"model.layers.{i}.mlp.down_proj", "mlp.down_proj", float(i)) for i in range(10)],
    r("model.layers.10.mlp.down_proj", "mlp.down_proj", None, reason="all-zero matrix"),
    r("model.layers.0.mlp.gate", "mlp.gate", 1.0),
    r("model.layers.0.mlp.gate_proj", "mlp.gate_proj", 1.0),
]


def test_reference_rule_int_len_times_percent():
    sel = select_top(RESULTS, 25)
    assert sel.chosen["mlp.down_proj"] == ("model.layers.9.mlp.down_proj", "model.layers.8.mlp.down_proj")
    assert sel.chosen["mlp.gate"] == ()  # int(1 * 25 / 100) = 0
    assert sel.always == ("lm_head.weight", "transformer.wte.weight")
    assert len(select_top(RESULTS, 100).chosen["mlp.down_proj"]) == 10  # the null one is not ranked


def test_yaml_parses_names_real_embeddings_and_says_what_selected_nothing():
    names = [x.name for x in RESULTS]
    text = yaml_text(select_top(RESULTS, 50), names, header="top 50%")
    doc = yaml.safe_load(text)
    assert doc["unfrozen_parameters"][:2] == ["^lm_head.weight$", "^transformer.wte.weight$"]
    assert "model.layers.9.mlp.down_proj" in doc["unfrozen_parameters"]
    assert "# mlp.gate layers\n#   none selected: int(1 * 50 / 100) = 0 of 1 scored" in text
    assert "#   1 without an SNR, not ranked" in text
    assert "# lm_head layers" not in text


def test_prefix_collisions_get_a_trailing_dot():
    names = ["model.layers.0.mlp.gate", "model.layers.0.mlp.gate_proj", "model.layers.1.mlp.down_proj"]
    assert module_pattern("model.layers.0.mlp.gate", names) == "model.layers.0.mlp.gate."
    assert module_pattern("model.layers.0.mlp.gate_proj", names) == "model.layers.0.mlp.gate_proj"
    assert (
        module_pattern("model.layers.1.mlp.down_proj", names + ["model.layers.10.mlp.down_proj"])
        == "model.layers.1.mlp.down_proj"
    )


def test_results_json_is_strict_json_of_the_scored_matrices_only(tmp_path):
    def no_constants(token):
        raise AssertionError(f"invalid JSON token {token}")

    summary = {"model": "m", "unscored_tensors": {"model.layers.10.mlp.down_proj": "all-zero matrix"}}
    paths = write_outputs(tmp_path, "m", RESULTS, [25, 12.5], [x.name for x in RESULTS], summary)
    for p in paths:
        if p.suffix == ".json":
            json.loads(p.read_text(), parse_constant=no_constants)
    data = results_json(RESULTS)
    assert data["model.layers.3.mlp.down_proj"] == {"snr": 3.0, "type": "mlp.down_proj"}
    assert "model.layers.10.mlp.down_proj" not in data  # D1: unscored, listed in the summary instead
    assert "null" not in (tmp_path / "snr_results_m.json").read_text()
    assert list(data)[:4] == ["lm_head"] + [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.mlp.gate",
        "model.layers.0.mlp.gate_proj",
    ]
    srt = sorted_json(RESULTS)["mlp.down_proj"]
    assert list(srt.values()) == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert (tmp_path / "snr_results_m_unfrozenparameters_12_5percent.yaml").exists()


DEGENERATE = [
    *[r(f"model.layers.{i}.self_attn.v_proj", "self_attn.v_proj", float(i)) for i in range(8)],
    Result("model.layers.10.self_attn.v_proj", "self_attn.v_proj", (8, 8), "BF16", math.inf, degenerate="noise-sum-0"),
    Result(
        "model.layers.9.self_attn.v_proj", "self_attn.v_proj", (8, 8), "BF16", math.inf, degenerate="rank-deficient"
    ),
    r("model.layers.11.self_attn.v_proj", "self_attn.v_proj", None, reason="all-zero matrix"),
]


def test_degenerate_matrices_rank_first_in_name_order_and_stay_strict_json(tmp_path):
    sel = select_top(DEGENERATE, 25)  # 10 scored (8 finite + 2 degenerate): int(10 * 25 / 100) = 2
    assert sel.chosen["self_attn.v_proj"] == ("model.layers.9.self_attn.v_proj", "model.layers.10.self_attn.v_proj")
    assert sel.counts["self_attn.v_proj"] == 10 and sel.unscored["self_attn.v_proj"] == 1
    write_outputs(tmp_path, "m", DEGENERATE, [25], [x.name for x in DEGENERATE], {"model": "m"})
    text = (tmp_path / "snr_results_m.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))
    assert data["model.layers.9.self_attn.v_proj"] == {
        "snr": 1.7976931348623157e308,
        "type": "self_attn.v_proj",
        "degenerate": "rank-deficient",
    }
    assert data["model.layers.10.self_attn.v_proj"]["degenerate"] == "noise-sum-0"
    assert "model.layers.11.self_attn.v_proj" not in data
    srt = json.loads((tmp_path / "snr_results_m_sorted.json").read_text())["self_attn.v_proj"]
    assert list(srt)[:3] == [
        "model.layers.9.self_attn.v_proj",
        "model.layers.10.self_attn.v_proj",
        "model.layers.7.self_attn.v_proj",
    ]
    # what the Axolotl plugin does with our file: group by type, stable sort by snr descending, int(n * fraction)
    by_type: dict = {}
    for name, info in data.items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    plugin = [
        n
        for layers in by_type.values()
        for n, _ in sorted(layers, key=lambda x: x[1], reverse=True)[: int(len(layers) * 0.25)]
    ]
    assert plugin == sel.names()


def test_percent_out_of_range():
    with pytest.raises(ValueError):
        select_top(RESULTS, 0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab._-/0", min_size=1, max_size=5), min_size=1, max_size=8),
    st.text(alphabet="ab._-/0", min_size=1, max_size=3),
)
def test_module_pattern_by_bisection_equals_the_rule_over_every_name(names, other):
    for name in [*names, other]:
        collides = any(o.startswith(name) and not o.startswith(name + ".") and o != name for o in names)
        nests = any(o.startswith(name + ".") for o in names)  # a module inside it: its own parameters only
        want = f"^{name}(.weight|.bias)?$" if nests else (name + "." if collides else name)
        assert module_pattern(name, names) == want


def test_output_json_refuses_nan_like_json_does():
    from streamscan.results.outputs import _dumps

    with pytest.raises(ValueError):
        _dumps({"m": {"snr": float("nan")}})


# --- ranking, selection and the JSON outputs against their plain definitions (hypothesis) ------------

# names with equal natural keys ("a7" and "a07"), prefixes of one another, digit runs anywhere
NAMES = st.text(alphabet="ab.07_[]", min_size=1, max_size=8)
SNRS = st.none() | st.sampled_from([0.5, 1.0, 2.0, math.inf]) | st.floats(0.0, 10.0, allow_nan=False)
KINDS = st.sampled_from(["noise-sum-0", "rank-deficient"])


@st.composite
def results(draw):
    out = []
    for name in draw(st.lists(NAMES, min_size=0, max_size=25, unique=True)):
        snr = draw(SNRS)
        role = draw(st.sampled_from([None, None, None, "embedding", "head"]))
        x = r(name, draw(st.sampled_from(["t.a", "t.b", name])), snr, role, None if snr is not None else "x")
        out.append(replace(x, degenerate=draw(KINDS)) if snr == math.inf else x)
    return draw(st.permutations(out))


def by_first_letter(name, type_):
    return f"{type_}/{name[:1]}"


def spec_ranking(results, group=None):
    """Per type (or group), in order of first appearance by natural name: its scored members by descending
    SNR (degenerate ones, inf, first), ties by natural name."""
    from streamscan.layout import natural_key

    ranked = {}
    for x in sorted(results, key=lambda x: natural_key(x.name)):
        members = ranked.setdefault(group(x.name, x.type) if group else x.type, [])
        if x.snr is not None:
            members.append(x)
    for members in ranked.values():
        members.sort(key=lambda x: (-x.snr, natural_key(x.name)))
    return ranked


@settings(max_examples=200, deadline=None)
@given(results(), st.sampled_from([None, by_first_letter]), st.sampled_from([0.5, 25, 33.3, 50, 100]))
def test_ranking_and_selection_follow_the_reference_rule(rs, group, percent):
    from streamscan.results.selection import natural_order, rank_by_type, rank_ordered, select_ranked

    spec = spec_ranking(rs, group)
    assert rank_by_type(rs, group) == spec and list(rank_by_type(rs, group)) == list(spec)
    assert rank_ordered(natural_order(rs), group) == spec
    sel = select_top(rs, percent, group)
    assert sel.chosen == {t: tuple(x.name for x in m[: int(len(m) * percent / 100)]) for t, m in spec.items()}
    assert select_ranked(rs, rank_by_type(rs, group), percent, group) == sel


@settings(max_examples=60, deadline=None)
@given(results())
def test_the_json_outputs_are_json_dumps_indent_4_of_their_definition(tmp_path_factory, rs):
    from streamscan.layout import natural_key
    from streamscan.results.outputs import output_paths

    out = tmp_path_factory.mktemp("o")
    summary = {"model": "m", "seconds": 1.5, "skipped_tensors": {"x": "why"}, "failures": {}, "ranks": 1}
    write_outputs(out, "m", rs, [25], [x.name for x in rs], summary)
    natural = sorted(rs, key=lambda x: natural_key(x.name))

    def strict(snr):  # D2: inf as the largest double
        return sys.float_info.max if snr == math.inf else snr

    results_doc = {  # D1: the scored matrices only
        x.name: {"snr": strict(x.snr), "type": x.type, **({"degenerate": x.degenerate} if x.degenerate else {})}
        for x in natural
        if x.snr is not None
    }
    sorted_doc = {t: {x.name: strict(x.snr) for x in m} for t, m in spec_ranking(rs).items() if m}
    paths = output_paths(out, "m")

    def dumps(doc):
        return json.dumps(doc, indent=4, allow_nan=False) + "\n"

    assert paths["results"].read_text() == dumps(results_doc)
    assert paths["sorted"].read_text() == dumps(sorted_doc)
    assert (out / "streamscan_summary.json").read_text() == dumps(summary)


def test_prefix_checks_bisect_the_sorted_names_and_never_scan_them():
    # a scan over every name per YAML line is quadratic: 70k names made `select` take minutes
    from streamscan.results.selection import Prefixes

    class NoScan(list):
        def __contains__(self, item):
            raise AssertionError("a linear scan over every name")

        def __iter__(self):
            raise AssertionError("a linear scan over every name")

    names = ["mlp.gate", "mlp.gate_proj", "attn", "attn.inner", "attn.inner.x", "a.b", "a.b."]
    expected = {n: Prefixes(names).pattern(n) for n in names}
    prefixes = Prefixes(names)
    prefixes.names = NoScan(prefixes.names)
    assert {n: prefixes.pattern(n) for n in names} == expected
