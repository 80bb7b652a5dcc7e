"""The fast paths of the outputs equal the plain code they replaced (kept here as the reference), byte for byte."""

import json
import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.layout import natural_key
from streamscan.records import Result
from streamscan.results.outputs import _dumps, output_paths, write_outputs
from streamscan.results.selection import (
    Prefixes,
    Selection,
    natural_order,
    rank_by_type,
    rank_ordered,
    select_ranked,
    select_top,
    yaml_text,
)

# --- the code before the fast paths ---------------------------------------------------------------------


def old_rank_by_type(results, group=None):
    ranked = {}
    for r in sorted(results, key=lambda r: natural_key(r.name)):
        key = group(r.name, r.type) if group else r.type
        ranked.setdefault(key, [])
        if r.snr is not None:
            ranked[key].append(r)
    for members in ranked.values():
        members.sort(key=lambda r: (-r.snr, natural_key(r.name)))
    return ranked


def old_select_top(results, percent, group=None):
    results = list(results)
    ranked = old_rank_by_type(results, group)
    chosen = {t: tuple(r.name for r in members[: int(len(members) * percent / 100)]) for t, members in ranked.items()}
    unscored = {}
    for r in results:
        if r.snr is None:
            key = group(r.name, r.type) if group else r.type
            unscored[key] = unscored.get(key, 0) + 1
    always = tuple(f"{r.name}.weight" for r in sorted(results, key=lambda r: (r.role != "head", r.name)) if r.role)
    return Selection(percent, always, chosen, {t: len(m) for t, m in ranked.items()}, unscored)


def old_results_json(results):
    out = {}
    for r in sorted(results, key=lambda r: natural_key(r.name)):
        entry = {"snr": r.snr, "type": r.type}
        if r.snr is None:
            entry["reason"] = r.reason
        out[r.name] = entry
    return out


def old_sorted_json(results):
    results = list(results)
    out = {t: {r.name: r.snr for r in members} for t, members in old_rank_by_type(results).items()}
    for r in sorted(results, key=lambda r: natural_key(r.name)):
        if r.snr is None:
            out[r.type][r.name] = None
    return out


def dumps(obj):
    return json.dumps(obj, indent=4, allow_nan=False) + "\n"


# --- strategies -----------------------------------------------------------------------------------------

# names with equal natural keys ("a7" and "a07"), prefixes of one another, digit runs anywhere
NAMES = st.text(alphabet="ab.07_[]", min_size=1, max_size=8)
SNRS = st.none() | st.sampled_from([0.5, 1.0, 2.0]) | st.floats(0.0, 10.0, allow_nan=False)


@st.composite
def results(draw):
    names = draw(st.lists(NAMES, min_size=0, max_size=25, unique=True))
    out = []
    for name in names:
        snr = draw(SNRS)
        role = draw(st.sampled_from([None, None, None, "embedding", "head"]))
        out.append(
            Result(
                name,
                draw(st.sampled_from(["t.a", "t.b", name])),
                (2, 2),
                "F32",
                snr,
                reason=None if snr is not None else "no noise",
                status="ok" if snr is not None else "null",
                role=role,
            )
        )
    return draw(st.permutations(out))


def by_first_letter(name, type_):
    return f"{type_}/{name[:1]}"


# --- tests ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(results(), st.sampled_from([None, by_first_letter]))
def test_ranking_equals_the_old_ranking(rs, group):
    natural_key.cache_clear()
    old = old_rank_by_type(rs, group)
    assert rank_by_type(rs, group) == old
    assert rank_ordered(natural_order(rs), group) == old
    assert [list(m) for m in rank_by_type(rs, group).values()] == [list(m) for m in old.values()]  # same order
    assert natural_order(rs) == sorted(rs, key=lambda r: natural_key(r.name))


@settings(max_examples=200, deadline=None)
@given(results(), st.sampled_from([None, by_first_letter]), st.sampled_from([0.5, 25, 33.3, 50, 100]))
def test_selection_from_a_shared_ranking_equals_the_old_selection(rs, group, percent):
    old = old_select_top(rs, percent, group)
    assert select_top(rs, percent, group) == old
    assert select_ranked(rs, rank_by_type(rs, group), percent, group) == old


@settings(max_examples=200, deadline=None)
@given(results())
def test_the_result_jsons_equal_the_old_ones_byte_for_byte(rs):
    from streamscan.results.outputs import results_json, results_text, sorted_json

    assert _dumps(results_json(rs)) == dumps(old_results_json(rs))
    assert _dumps(sorted_json(rs)) == dumps(old_sorted_json(rs))
    ordered = natural_order(rs)
    assert _dumps(results_json(ordered, ordered=True)) == dumps(old_results_json(rs))
    assert _dumps(sorted_json(ordered, rank_ordered(ordered), ordered=True)) == dumps(old_sorted_json(rs))
    assert results_text(ordered) == dumps(old_results_json(rs))


def test_results_text_of_repeated_names_or_odd_fields_goes_through_the_dicts():
    from streamscan.results.outputs import results_json, results_text

    a, b = Result("x.1", "t", (2, 2), "F32", 1.5), Result("x.1", "t", (2, 2), "F32", None, reason="r")
    c = Result("x.2", "t", (2, 2), "F32", 7)  # an int SNR
    for rs in ([a, b], [b, a], [a, c], [c], []):
        assert results_text(rs) == dumps(results_json(rs, ordered=True)) == dumps(old_results_json(rs))


@settings(max_examples=60, deadline=None)
@given(results(), st.sampled_from([None, by_first_letter]))
def test_write_outputs_writes_what_the_old_code_wrote(tmp_path_factory, rs, group):
    out = tmp_path_factory.mktemp("o")
    names = [r.name for r in rs] + ["ab.0_x", "a.b"]
    fused = {r.name: r.name + "_fused" for r in rs[:2]}
    summary = {"model": "m", "seconds": 1.5, "skipped_tensors": {"x": "why"}, "failures": {}, "ranks": 1}
    write_outputs(out, "m", rs, [25, 50], names, summary, group=group, fused=fused, grouping="pooled")
    paths = output_paths(out, "m", [25, 50])
    assert paths["results"].read_text() == dumps(old_results_json(rs))
    assert paths["sorted"].read_text() == dumps(old_sorted_json(rs))
    for p in (25, 50):
        header = f"streamscan: top {p:g}% by Spectrum SNR per type, model m"
        if group is not None:
            header += "\nMoE experts ranked with --moe-grouping pooled"
        expected = yaml_text(old_select_top(rs, p, group), names, header, fused)
        assert paths[f"yaml{p}"].read_text() == expected
    assert (out / "streamscan_summary.json").read_text() == dumps(summary)


@settings(max_examples=200, deadline=None)
@given(st.lists(NAMES, max_size=20), st.lists(NAMES, max_size=10))
def test_patterns_kept_across_calls_equal_fresh_ones(names, asked):
    prefixes = Prefixes(names)
    assert prefixes.names == sorted(set(names))
    for name in asked + asked:
        assert prefixes.pattern(name) == Prefixes(names).pattern(name)


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_ANY = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3))
_KEYS = st.text() | st.integers() | st.booleans() | st.none()


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, st.dictionaries(_KEYS, _SCALARS) | _ANY, max_size=6))
def test_json_layout_equals_json_dumps_for_any_nesting_and_keys(obj):
    assert _dumps(obj) == dumps(obj)


@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans())
def test_json_layout_refuses_non_finite_floats_anywhere(v, top):
    import pytest

    with pytest.raises(ValueError):
        _dumps({"a": v} if top else {"m": {"snr": 1.0, "x": v}})
    with pytest.raises(ValueError):
        json.dumps({"a": v}, allow_nan=False)


def test_json_layout_of_int_subclasses_and_big_ints_is_json_s():
    import enum

    class E(enum.IntEnum):
        A = 3

    obj = {"a": {"e": E.A, "b": 10**30, "f": -0.0, "g": 1e300}, "t": True}
    assert _dumps(obj) == dumps(obj)
    assert re.search(r'"e": 3,', _dumps(obj))
