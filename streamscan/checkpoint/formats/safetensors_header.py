"""safetensors_header: a safetensors header read remotely (HTTP Range from the Hub) checked as safetensors
would check the file, where there is no file yet for safetensors' own parser.

Local files are validated by safetensors itself (``safetensors.py`` opens them with ``safe_open``). A
remote header is the 8-byte little-endian length ``N``, then ``N`` bytes of JSON; :func:`check_header`
parses it with ``json.loads`` and applies safetensors' rules against the file size the Hub declared: the
header is UTF-8 JSON (no NaN, no lone surrogate), ``__metadata__`` maps strings to strings, each tensor
has a dtype the installed safetensors knows, a shape of integers in 0..2**64-1, and ``data_offsets``
``[start, end]`` spanning exactly its bytes; sorted by offset the tensors tile the data section exactly.
Duplicate tensor names keep the last one, as in safetensors. ``tests/checkpoint/test_safetensors_header.py``
checks that this accepts exactly what ``safe_open`` accepts.
"""

from __future__ import annotations

import functools
import json
import re
import struct

MAX_HEADER_SIZE = 100_000_000  # safetensors' own limit (a decimal 100 MB); checked before the header is read
U64_MAX = (1 << 64) - 1
_NEGATIVE = -1  # every negative JSON integer (``-0`` too: a u64 refuses it)
_FIELDS = ("dtype", "shape", "data_offsets")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # only an escape can make a lone surrogate


class HeaderError(ValueError):
    """What is wrong with a header, as one line (the caller adds the file and the fix)."""


@functools.lru_cache(maxsize=64)
def dtype_bits(dtype: str) -> int | None:
    """Bits per element of DTYPE as the installed safetensors knows it (asked of ``safetensors.deserialize``
    with 8 elements, which take as many bytes as one element has bits), or None for a dtype it refuses."""
    from safetensors import deserialize

    for nbytes in range(1, 129):
        raw = json.dumps({"x": {"dtype": dtype, "shape": [8], "data_offsets": [0, nbytes]}}).encode()
        try:
            deserialize(struct.pack("<Q", len(raw)) + raw + bytes(nbytes))
        except Exception:  # noqa: BLE001 - SafetensorError (or a wrong size): not this one
            continue
        return nbytes
    return None


class _Entry(tuple):
    """A JSON object with exactly the keys dtype, shape and data_offsets, as (dtype, shape, offsets)."""

    __slots__ = ()


class _Object(list):
    """Any other JSON object, as its (key, value) pairs in order."""

    __slots__ = ()


def _object(pairs):
    if len(pairs) == 3:
        fields = dict(pairs)
        if len(fields) == 3 and all(f in fields for f in _FIELDS):
            return _Entry((fields["dtype"], fields["shape"], fields["data_offsets"]))
    return _Object(pairs)


def _int(text: str) -> int:
    if text[0] == "-":
        return _NEGATIVE
    return int(text) if len(text) <= 20 else U64_MAX + 1  # no 4300-digit int() for a hostile number


def _constant(name: str):
    raise HeaderError(f"{name} is not JSON")


def _u64s(value, field: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v <= U64_MAX for v in value):
        raise HeaderError(f"{field} must be a list of integers in 0..2**64-1, not {_short(value)}")
    return value


def _short(value) -> str:
    text = json.dumps(value, default=str, ensure_ascii=True)
    return text if len(text) <= 60 else text[:60] + "..."


def _tensor(name: str, value) -> tuple[str, str, tuple[int, ...], int, int]:
    if isinstance(value, _Entry):
        dtype, shape, offsets = value
    elif isinstance(value, _Object):  # any order, unknown fields ignored, a repeated field refused (serde)
        fields = dict(value)
        if len(fields) != len(value):
            raise HeaderError(f"tensor {name!a}: a field appears twice")
        missing = [f for f in _FIELDS if f not in fields]
        if missing:
            raise HeaderError(f"tensor {name!a}: no {missing[0]}")
        dtype, shape, offsets = fields["dtype"], fields["shape"], fields["data_offsets"]
    elif isinstance(value, list) and len(value) == 3:  # serde reads a struct from a 3-element list too
        dtype, shape, offsets = value
    else:
        raise HeaderError(f"tensor {name!a}: {_short(value)} is not a tensor entry")
    bits = dtype_bits(dtype) if isinstance(dtype, str) else None
    if bits is None:
        raise HeaderError(f"tensor {name!a}: unknown dtype {_short(dtype)}")
    shape = _u64s(shape, f"tensor {name!a}: shape")
    offsets = _u64s(offsets, f"tensor {name!a}: data_offsets")
    if len(offsets) != 2 or offsets[1] < offsets[0]:
        raise HeaderError(f"tensor {name!a}: data_offsets must be [start, end], not {_short(offsets)}")
    start, end = offsets
    numel = 1
    for dim in shape:  # refused as soon as a partial product passes 2**64-1, as safetensors' checked_mul
        numel *= dim
        if numel > U64_MAX:
            raise HeaderError(f"tensor {name!a}: shape {shape} overflows 64 bits")
    if numel * bits > U64_MAX or numel * bits % 8:
        raise HeaderError(f"tensor {name!a}: {dtype}{shape} is not a whole number of bytes within 64 bits")
    if end - start != numel * bits // 8:
        raise HeaderError(
            f"tensor {name!a}: data_offsets [{start}, {end}] hold {end - start} bytes, {dtype}{shape} needs "
            f"{numel * bits // 8}"
        )
    return name, dtype, tuple(shape), start, end


def check_header(raw: bytes, file_size: int) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """The tensors of header RAW (the JSON after the 8-byte length) of a file of FILE_SIZE bytes, as
    ``(name, dtype, shape, start, end)`` sorted by offset (offsets relative to the data section, which starts
    at ``8 + len(raw)``). Raises HeaderError (one line) for a header safetensors would refuse."""
    data_len = file_size - 8 - len(raw)
    if len(raw) > MAX_HEADER_SIZE or data_len < 0:
        raise HeaderError(f"header length {len(raw)} does not fit a file of {file_size} bytes")
    try:
        top = json.loads(raw.decode("utf-8"), object_pairs_hook=_object, parse_int=_int, parse_constant=_constant)
    except UnicodeDecodeError as err:
        raise HeaderError(f"header is not UTF-8 ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise HeaderError("header nests too deep") from None
    except ValueError as err:  # JSONDecodeError (a ValueError); our HeaderError passes
        if isinstance(err, HeaderError):
            raise
        raise HeaderError(f"header is not JSON ({err})") from None
    if not isinstance(top, (_Object, _Entry)):
        raise HeaderError("header is not a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and any(_has_surrogate(text) for text in _strings(top)):
        raise HeaderError("header holds a lone UTF-16 surrogate escape")
    tensors: dict = {}
    seen_metadata = False
    for name, value in _pairs(top):
        if name == "__metadata__":
            if seen_metadata:
                raise HeaderError("__metadata__ appears twice")
            seen_metadata = True
            _check_metadata(value)
        else:
            tensors[name] = value  # a repeated name keeps its last entry, as safetensors does
    entries = file_order([_tensor(name, value) for name, value in tensors.items()])
    del tensors, top
    expect = 0
    for name, _dtype, _shape, start, end in entries:
        if start != expect:
            raise HeaderError(f"tensor {name!a}: data starts at {start}, the tensor before it ends at {expect}")
        expect = end
    if expect != data_len:
        raise HeaderError(f"the tensors hold {expect} bytes, the data section after the header has {data_len}")
    return entries


def _pairs(value) -> list:
    """The (key, value) pairs of a parsed JSON object."""
    return list(zip(_FIELDS, value)) if isinstance(value, _Entry) else value


def _check_metadata(value) -> None:
    if value is not None and not (
        isinstance(value, (_Object, _Entry)) and all(isinstance(v, str) for _k, v in _pairs(value))
    ):
        raise HeaderError("__metadata__ must map strings to strings")


def _strings(value):
    """Every string of a parsed JSON value, keys included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, (_Object, _Entry)):
            for key, inner in _pairs(item):
                yield key
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def file_order(entries: list) -> list:
    """ENTRIES ``(name, dtype, shape, start, end)`` sorted by (start, end), empty tensors at one offset by name
    (safetensors lists those in hash order), in place."""
    entries.sort(key=_name)
    entries.sort(key=_end)
    entries.sort(key=_start)
    return entries


def _name(entry) -> str:
    return entry[0]


def _start(entry) -> int:
    return entry[3]


def _end(entry) -> int:
    return entry[4]
