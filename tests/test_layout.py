"""layout.natural_key: the split-based key equals the per-part conversion of ASCII digit runs; only ASCII
digits count as numbers (issue 22: '²' and '٣' are text)."""

import re

from hypothesis import example, given
from hypothesis import strategies as st

from streamscan.layout import natural_key

_DIGITS = re.compile(r"([0-9]+)")


def old_natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isascii() and p.isdigit() else p for p in _DIGITS.split(name))


names = st.text(alphabet=st.sampled_from("ab._-[]0123456789٣०²"), max_size=30) | st.text(max_size=30)


@given(names)
@example("")
@example("7")
@example("model.layers.10.mlp.experts.255.down_proj")
@example("a.007.b")
@example("x.mlp.experts.gate_up_proj[3].gate")
@example("layer٣.x")  # a non-ASCII decimal digit: text
@example("model.layers.².mlp")
def test_natural_key_equals_the_old_key(name):
    natural_key.cache_clear()
    expected = old_natural_key(name)
    assert natural_key(name) == expected
    assert natural_key(name) == expected  # the cached value too


def test_natural_key_orders_numbers_by_value():
    assert sorted(["l.10.a", "l.2.a", "l.2"], key=natural_key) == ["l.2", "l.2.a", "l.10.a"]
    assert natural_key("a.2.b") == ("a.", 2, ".b")


def test_only_ascii_digits_make_a_layer_or_a_type():
    from streamscan.layout import layer_index, type_key

    for digit in ("²", "٣", "०"):
        name = f"model.layers.{digit}.mlp.down_proj"
        assert layer_index(name) is None and type_key(name) == name
    assert layer_index("model.layers.12.mlp") == 12 and type_key("model.layers.12.mlp.x") == "mlp.x"
