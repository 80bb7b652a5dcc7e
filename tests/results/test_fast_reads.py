"""Records and headers read without the dataclasses' __init__ equal those built by it; no_gc restores the collector."""

import dataclasses
import gc
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.records import ExpertRow, Result
from streamscan.results.journal import _ORDER, _result_from
from streamscan.results.no_gc import no_gc

VALUES = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=3)


def record(**over):
    r = Result("m.layers.0.x", "x", (4, 2), "F32", 0.5, worker="cpu0", seconds=0.25)
    d = r.to_dict()
    d["shape"] = list(d["shape"])
    d.update(over)
    return d


def old_result_from(row):
    """The checks before the fast path (journal.py at 2a69d5e), then Result(**fields)."""
    import math

    fields_ = {f.name for f in dataclasses.fields(Result)}
    defaults = {f.name: f.default for f in dataclasses.fields(Result) if f.default is not dataclasses.MISSING}
    if type(row) is not dict:
        raise ValueError
    row = {k: v for k, v in row.items() if k in fields_}
    if not (fields_ - defaults.keys()) <= row.keys():
        raise ValueError
    shape = row.get("shape", ())
    if type(shape) is not list or not all(type(d) is int for d in shape):
        raise ValueError
    f = {k: row[k] if k in row else defaults[k] for k in _ORDER}
    f["shape"] = tuple(shape)
    if not (type(f["name"]) is type(f["type"]) is type(f["dtype"]) is str) or f["status"] not in (
        "ok",
        "null",
        "error",
    ):
        raise ValueError

    def finite(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))

    if not all(finite(f[k]) for k in ("snr", "sigma_max", "threshold", "seconds", "read_seconds")):
        raise ValueError
    return Result(**f)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*_ORDER, "extra"]), VALUES, max_size=4),
    st.booleans(),
    st.sampled_from(["keep", "drop_one", "shuffle"]),
)
def test_a_record_read_fast_equals_the_old_read_or_is_refused_alike(over, in_json, layout):
    row = record(**over)
    if layout == "drop_one":
        row.pop(next(iter(over), "note"), None)
    elif layout == "shuffle":
        row = dict(reversed(list(row.items())))
    if in_json:
        try:
            row = json.loads(json.dumps(row))
        except ValueError:
            return
    try:
        expected = old_result_from(dict(row))
    except (ValueError, TypeError):
        with pytest.raises(ValueError):
            _result_from(dict(row))
        return
    got = _result_from(dict(row))
    assert got == expected
    assert list(got.__dict__.items()) == list(expected.__dict__.items())  # same fields, same order, same types
    assert [type(v) for v in got.__dict__.values()] == [type(v) for v in expected.__dict__.values()]


def test_a_journal_line_in_field_order_takes_the_fast_path_and_equals_result():
    row = json.loads(json.dumps(record()))
    assert tuple(row) == _ORDER
    assert _result_from(row) == Result(**{**record(), "shape": (4, 2)})


@given(st.lists(st.none() | st.integers() | st.text(max_size=3), min_size=0, max_size=8))
def test_expert_rows_read_without_init_equal_the_dataclass(row):
    try:
        expected = ExpertRow(*row)
    except TypeError:
        with pytest.raises(TypeError):
            ExpertRow.from_list(row)
        return
    got = ExpertRow.from_list(row)
    assert got == expected and hash(got) == hash(expected) and repr(got) == repr(expected)
    assert list(got.__dict__.items()) == list(expected.__dict__.items())
    assert got.as_list() == list(row)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.name = "x"


def test_no_gc_pauses_the_collector_and_restores_it():
    assert gc.isenabled()
    with no_gc():
        assert not gc.isenabled()
        with no_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # only the outermost block turns it back on
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_gc():
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with no_gc():
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()


def test_objects_made_under_no_gc_are_still_collected():
    import weakref

    class Node:
        pass

    with no_gc():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle
        ref = weakref.ref(a)
        del a, b
    gc.collect()
    assert ref() is None
