"""Tensor names go into the unfrozen_parameters YAML only as data: loading it back gives the selection."""

import re

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.records import Result
from streamscan.results.selection import axolotl_escape, module_pattern, select_top, yaml_item, yaml_text

HOSTILE = [
    "x\n- .*\nlearning_rate: 100.0\n#.weight",
    "a: b",
    "a #b",
    "- c",
    '"quoted"',
    "back\\slash",
    "true",
    "null",
    "123",
    "1e3",
    "2001-12-14",
    "*alias",
    "&anchor",
    "!tag",
    "{flow}",
    "[flow]",
    "|",
    "@x",
    "line\u2028sep",
    "nel\x85x",
    "emoji\U0001f600",
    "tab\tname",
    "",
    " leading",
    "trailing ",
]


def r(name, snr, type_="mlp.down_proj", role=None):
    return Result(name=name, type=type_, shape=(8, 8), dtype="BF16", snr=snr, reason=None, status="ok", role=role)


def check_round_trip(names):
    results = [r(n, float(i + 1)) for i, n in enumerate(names)]
    results += [r(names[0], 1.0, type_=names[0], role="head")]
    sel = select_top(results, 100)
    text = yaml_text(sel, names, header="hostile\nnames")
    doc = yaml.safe_load(text)
    assert list(doc) == ["unfrozen_parameters"]
    expected = [f"^{axolotl_escape(n)}$" for n in sel.always] + [module_pattern(n, names) for n in sel.names()]
    assert doc["unfrozen_parameters"] == expected
    return doc, sel


def axolotl_regex(line: str) -> re.Pattern:
    """Axolotl's utils/freeze.py LayerNamePattern (no range): dots escaped unless followed by '+'."""
    return re.compile(re.sub(r"\.(?!\+)", "\\\\.", line))


HOSTILE_REGEX = [".+|.0.mlp.down_proj.weight", ".*", "a(b", "x[3]", "x[1:2]", "a\\.b", "$", "^", "a.+b", "a|b", "\\"]


def test_every_line_matches_exactly_the_name_it_names_under_axolotl():
    names = HOSTILE + HOSTILE_REGEX + ["model.layers.0.mlp.down_proj", "model.layers.1"]
    params = [n + ".weight" for n in names] + ["model.layers.0.mlp.gate_proj.weight", "lm_head.weight"]
    for n in names:
        line = module_pattern(n, names)
        assert not re.match(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", line), line  # never read as a dim-0 range
        hits = [p for p in params if axolotl_regex(line).match(p)]
        assert hits == [n + ".weight"], (n, line, hits)
        anchored = f"^{axolotl_escape(n + '.weight')}$"
        assert [p for p in params if axolotl_regex(anchored).match(p)] == [n + ".weight"]


def test_injected_name_stays_one_item():
    doc, sel = check_round_trip(HOSTILE)
    assert "learning_rate" not in doc
    items = doc["unfrozen_parameters"]
    assert module_pattern(HOSTILE[0], HOSTILE) in items and ".*" not in items
    assert len(items) == len(sel.always) + len(sel.names())


def test_every_item_reads_back_as_the_name():
    for name in HOSTILE:
        assert yaml.safe_load(f"- {yaml_item(name)}\n") == [name], name
        assert yaml.safe_load(f"- {yaml_item('^' + name + '$')}\n") == ["^" + name + "$"], name


def test_ordinary_names_are_written_unquoted():
    for name in ["model.layers.0.mlp.gate_proj", "lm_head", "blk.3.attn_q", "model.layers.0.mlp.gate."]:
        assert yaml_item(name) == name
        assert yaml_item(f"^{name}.weight$") == f"^{name}.weight$"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_any_name_round_trips(name):
    assert yaml.safe_load(f"- {yaml_item(name)}\n") == [name]
    assert yaml.safe_load(f"- {yaml_item('^' + name + '$')}\n") == ["^" + name + "$"]
