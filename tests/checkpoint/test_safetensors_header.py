"""The safetensors header validator (formats/safetensors_header.py): explicit failure cases and hypothesis
differential tests against the installed safetensors ``safe_open``."""

import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from streamscan.checkpoint.formats.safetensors_header import (
    DTYPE_BITS,
    EXTRA_STRICT,
    HeaderError,
    parse_header,
    read_header,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------- builders


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def build(tensors, metadata=None, shuffle=None, sep=(",", ":")):
    """tensors: list of (name, dtype, shape). Returns (file bytes, header obj)."""
    hdr, off, data = {}, 0, []
    if metadata is not None:
        hdr["__metadata__"] = metadata
    rnd = random.Random(len(tensors))
    for name, dt, shape in tensors:
        n = nbytes(dt, shape)
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        data.append(bytes(rnd.randrange(2) if dt == "BOOL" else rnd.randrange(256) for _ in range(n)))
        off += n
    items = list(hdr.items())
    if shuffle is not None:
        shuffle.shuffle(items)
    raw = json.dumps(dict(items), separators=sep).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(data)


def blob_from_header(raw_header, data=b""):
    if isinstance(raw_header, str):
        raw_header = raw_header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw_header)) + raw_header + data


def write(tmp_path, blob, name="f.safetensors"):
    p = tmp_path / name
    p.write_bytes(blob)
    return str(p)


def st_open(path):
    """-> ('ok', {name: (dtype, shape)}, metadata) or ('err', msg)."""
    try:
        with safe_open(path, framework="numpy") as f:
            info = {}
            for k in f.keys():
                sl = f.get_slice(k)
                info[k] = (sl.get_dtype(), tuple(sl.get_shape()))
            return "ok", info, f.metadata(), list(f.offset_keys())
    except Exception as e:  # safetensors raises SafetensorError / others
        return "err", f"{type(e).__name__}: {e}"


def ours(path):
    try:
        return "ok", read_header(path)
    except HeaderError as e:
        return "err", e
    # any other exception propagates and fails the test


def check_agreement(path, allow_extra=True):
    """Core differential property."""
    o = ours(path)
    s = st_open(path)
    if o[0] == "ok":
        entries, metadata, data_start = o[1]
        entries = sorted(entries, key=lambda e: (e[3], e[4]))  # ours keeps the header's order
        assert s[0] == "ok", f"we accepted a file safetensors refuses: {s[1]}"
        _, info, smeta, offset_keys = s
        assert {e[0]: (e[1], e[2]) for e in entries} == info
        assert len(entries) == len(info)
        assert metadata == smeta
        assert [e[0] for e in entries] == offset_keys or _only_zero_size_ties(entries, offset_keys)
    else:
        err = o[1]
        msg = str(err)
        assert "\n" not in msg and "\r" not in msg
        assert msg.startswith(f"{err.path}: "), msg  # one line that names the file first
        if s[0] == "ok":
            assert allow_extra and err.code in EXTRA_STRICT, (
                f"we refused ({err.code}: {msg}) a file safetensors opens; not a documented extra rule"
            )
    return o, s


def _only_zero_size_ties(entries, offset_keys):
    # safetensors orders tensors with identical (start, end) by HashMap order
    key = {e[0]: (e[3], e[4]) for e in entries}
    return [key[n] for n in offset_keys] == [(e[3], e[4]) for e in entries]


# ---------------------------------------------------------------- valid files


def test_valid_roundtrip_all_dtypes(tmp_path):
    tensors = []
    for i, dt in enumerate(DTYPE_BITS):
        tensors.append((f"t{i}.{dt}", dt, (2, 4)))
    tensors.append(("empty", "F32", (0, 3)))
    tensors.append(("scalar", "F64", ()))
    p = write(tmp_path, build(tensors, metadata={"format": "pt", "k": "v\nmultiline"}))
    o, s = check_agreement(p, allow_extra=False)
    entries, md, data_start = o[1]
    assert md == {"format": "pt", "k": "v\nmultiline"}
    # offsets agree with actual bytes safetensors returns
    blob = open(p, "rb").read()
    with safe_open(p, framework="numpy") as f:
        for name, dt, _shape, a, b in entries:
            if dt in ("F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL"):
                assert f.get_tensor(name).tobytes() == blob[data_start + a : data_start + b]


def test_safetensors_writer_output(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    p = str(tmp_path / "w.safetensors")
    save_file(
        {"b": np.zeros((3, 5), np.float16), "a": np.ones(7, np.int64), "z": np.zeros((0,), np.float32)},
        p,
        metadata={"x": "y"},
    )
    check_agreement(p, allow_extra=False)


def test_torch_writer_output(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = str(tmp_path / "t.safetensors")
    save_file({"w": torch.zeros(4, 4, dtype=torch.bfloat16), "f8": torch.zeros(8, dtype=torch.float8_e4m3fn)}, p)
    o, _ = check_agreement(p, allow_extra=False)
    assert {e[1] for e in o[1][0]} == {"BF16", "F8_E4M3"}


def test_subbyte_dtypes(tmp_path):
    # F4 [2,3] = 24 bits: accepted by safetensors (only the total must be whole bytes)
    for dt, shape in (("F4", (2, 3)), ("F4", (3, 2)), ("F6_E2M3", (4,)), ("F6_E3M2", (2, 4))):
        p = write(tmp_path, build([("x", dt, shape)]))
        check_agreement(p, allow_extra=False)
    for dt, shape, nb in (("F4", (3,), 2), ("F6_E2M3", (2,), 2)):
        h = json.dumps({"x": {"dtype": dt, "shape": list(shape), "data_offsets": [0, nb]}})
        p = write(tmp_path, blob_from_header(h, b"\0" * nb))
        with pytest.raises(HeaderError, match="whole number of bytes"):
            read_header(p)
        assert st_open(p)[0] == "err"


def test_empty_header(tmp_path):
    assert read_header(write(tmp_path, blob_from_header("{}")))[:2] == ([], None)
    assert read_header(write(tmp_path, blob_from_header("{}      ")))[:2] == ([], None)


def test_json_dumps_spacing_and_shuffled_order(tmp_path):
    rnd = random.Random(3)
    tensors = [(f"layer.{i}", rnd.choice(["F32", "BF16", "U8"]), (rnd.randrange(4), 3)) for i in range(30)]
    p = write(tmp_path, build(tensors, shuffle=rnd, sep=(", ", ": ")))
    check_agreement(p, allow_extra=False)


def test_escapes_and_unicode_names(tmp_path):
    h = (
        '{"\\u00e9t\\u00e9":{"\\u0064type":"\\u0046\\u0033\\u0032","shape":[1],"data_offsets":[0,4]},'
        '"\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[4,5]},"名前":{"dtype":"U8","shape":[],"data_offsets":[5,6]}}'
    )
    p = write(tmp_path, blob_from_header(h, b"\0" * 6))
    o, _ = check_agreement(p, allow_extra=False)
    assert [e[0] for e in o[1][0]] == ["été", "😀", "名前"]


def test_metadata_null_is_absent(tmp_path):
    h = '{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    check_agreement(write(tmp_path, blob_from_header(h, b"\0")), allow_extra=False)


# ---------------------------------------------------------------- failures

T = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def refuse(tmp_path, raw_header, data=b"\0" * 4, code=None, match=None, st_refuses=True):
    p = write(tmp_path, blob_from_header(raw_header, data))
    with pytest.raises(HeaderError) as ei:
        read_header(p)
    e = ei.value
    msg = str(e)
    assert "\n" not in msg and msg.startswith(p + ": ")
    if code:
        assert e.code == code, msg
    if match:
        assert match in msg, msg
    s = st_open(p)
    if st_refuses:
        assert s[0] == "err", "safetensors unexpectedly accepts this"
    else:
        assert s[0] == "ok" and e.code in EXTRA_STRICT
    return e


def test_duplicate_tensor_names(tmp_path):
    h = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    refuse(tmp_path, h, b"\0" * 8, "duplicate-key", "tensor 'a'", st_refuses=True)  # st: offsets gap after dedupe
    h = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    refuse(tmp_path, h, b"\0" * 8, "duplicate-key", st_refuses=False)  # st keeps the last one


def test_duplicate_field_and_metadata_key(tmp_path):
    refuse(tmp_path, '{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', code="duplicate-key")
    refuse(tmp_path, '{"__metadata__":{"x":"1","x":"2"},' + T[1:], code="duplicate-key", st_refuses=False)
    refuse(tmp_path, '{"__metadata__":{},"__metadata__":{},' + T[1:], code="duplicate-key")


def test_overlap(tmp_path):
    h = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        }
    )
    refuse(tmp_path, h, b"\0" * 8, "overlap", "tensor 'b'")


def test_gap(tmp_path):
    h = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
        }
    )
    refuse(tmp_path, h, b"\0" * 12, "gap", "4 uncovered bytes")
    refuse(tmp_path, json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), b"\0" * 8, "gap")


def test_zero_size_inside_other_tensor(tmp_path):
    h = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]},
        }
    )
    refuse(tmp_path, h, b"\0" * 4)


@pytest.mark.parametrize(
    "shape,code",
    [
        ("[-1]", "bad-value"),
        ("[-0]", "bad-value"),
        ("[1.0]", "bad-type"),
        ("[1e0]", "bad-type"),
        ("[true]", "bad-type"),
        ("[null]", "bad-type"),
        ('["1"]', "bad-type"),
        ("[[1]]", "bad-type"),
        ("1", "bad-type"),
        ("[18446744073709551616]", "overflow"),
        ("[+1]", "bad-type"),
        ("[" + "9" * 5000 + "]", "overflow"),
        ("[1,]", "bad-type"),
        ("[NaN]", "bad-type"),
    ],
)
def test_bad_shapes(tmp_path, shape, code):
    refuse(tmp_path, f'{{"a":{{"dtype":"F32","shape":{shape},"data_offsets":[0,4]}}}}', code=code)


@pytest.mark.parametrize(
    "offs,code",
    [
        ("[0]", "bad-value"),
        ("[0,4,4]", "bad-value"),
        ("[0,true]", "bad-type"),
        ("[0,4.0]", "bad-type"),
        ("[4,0]", "bad-offset"),
        ('{"0":4}', "bad-type"),
        ("[-4,0]", "bad-value"),
    ],
)
def test_bad_offsets(tmp_path, offs, code):
    refuse(tmp_path, f'{{"a":{{"dtype":"F32","shape":[1],"data_offsets":{offs}}}}}', code=code)


def test_lowercase_bf16(tmp_path):
    e = refuse(tmp_path, '{"a":{"dtype":"bf16","shape":[1],"data_offsets":[0,2]}}', b"\0\0", "bad-dtype")
    assert "'BF16'" in str(e)


@pytest.mark.parametrize("dt", ["Q7", "C128", "F8_E3M4", "I4", "float32", "", "F32 ", "STR"])
def test_unknown_dtype(tmp_path, dt):
    refuse(tmp_path, json.dumps({"a": {"dtype": dt, "shape": [1], "data_offsets": [0, 4]}}), code="bad-dtype")


def test_dtype_not_string(tmp_path):
    refuse(tmp_path, '{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}', code="bad-type")


@pytest.mark.parametrize(
    "md,code",
    [
        ('{"x":1}', "bad-metadata"),
        ('["x"]', "bad-metadata"),
        ('"x"', "bad-metadata"),
        ('{"x":null}', "bad-metadata"),
        ('{"x":{"y":"z"}}', "bad-metadata"),
        ("1", "bad-metadata"),
    ],
)
def test_bad_metadata(tmp_path, md, code):
    refuse(tmp_path, f'{{"__metadata__":{md},{T[1:]}', code=code)


def test_metadata_that_looks_like_tensor(tmp_path):
    refuse(
        tmp_path,
        json.dumps({"__metadata__": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
        b"",
        code="bad-metadata",
    )


@pytest.mark.parametrize(
    "name", ["a\nb", "a\x00b", "a\tb", "a\rb", "a\x1bb", "a\u202eb", "a\u200bb", "a\u2028b", "a\x7fb", "\ufeffa"]
)
def test_control_chars_in_names(tmp_path, name):
    e = refuse(
        tmp_path,
        json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
        code="name-control-char",
        st_refuses=False,
    )
    assert "\\" in str(e)  # escaped, never raw


def test_name_too_long(tmp_path):
    refuse(
        tmp_path,
        json.dumps({"x" * 1025: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
        code="name-too-long",
        st_refuses=False,
    )
    refuse(
        tmp_path,
        json.dumps({"x" * 100_000: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
        code="name-too-long",
        st_refuses=False,
    )


def test_lone_surrogate_name(tmp_path):
    refuse(tmp_path, '{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', code="json")


def test_unknown_field_and_array_entry(tmp_path):
    refuse(
        tmp_path, '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', code="unknown-field", st_refuses=False
    )
    refuse(tmp_path, '{"a":["F32",[1],[0,4]]}', code="entry-not-object", st_refuses=False)
    refuse(tmp_path, '{"a":{"dtype":"F32","data_offsets":[0,4]}}', code="missing-field")
    refuse(tmp_path, '{"a":"F32"}', code="bad-type")


def test_too_many_dims(tmp_path):
    h = json.dumps({"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}})
    refuse(tmp_path, h, b"\0", code="too-many-dims", st_refuses=False)
    h = json.dumps({"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}, indent=1)
    refuse(tmp_path, h, b"\0", code="too-many-dims", st_refuses=False)


def test_header_length_beyond_file(tmp_path):
    p = write(tmp_path, struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(HeaderError, match="exceeds the file size"):
        read_header(p)
    assert st_open(p)[0] == "err"
    with pytest.raises(HeaderError):
        parse_header(b"{}", 5, "mem")


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"\x01\x00",
        struct.pack("<Q", 0),
        struct.pack("<Q", 1) + b"{",
        struct.pack("<Q", 100_000_001) + b"{}",
        struct.pack("<Q", 2**64 - 1),
    ],
)
def test_bad_length_prefix(tmp_path, prefix):
    p = write(tmp_path, prefix)
    with pytest.raises(HeaderError):
        read_header(p)
    assert st_open(p)[0] == "err"


def test_header_not_starting_with_brace(tmp_path):
    refuse(tmp_path, " " + T, code="header-start", st_refuses=False)
    refuse(tmp_path, "\n" + T, code="header-start", st_refuses=False)
    refuse(tmp_path, "[]", b"", code="not-object")
    refuse(tmp_path, "\ufeff" + T, code="not-object")


def test_truncated_and_trailing_data(tmp_path):
    refuse(tmp_path, T, b"\0" * 3, code="truncated")
    refuse(tmp_path, T, b"\0" * 5, code="incomplete-buffer", match="1 trailing bytes")
    refuse(tmp_path, "{}", b"x", code="incomplete-buffer")


@pytest.mark.parametrize(
    "h",
    [
        "{",
        "{}}",
        '{"a"}',
        '{"a":}',
        T[:-1],
        T + "x",
        T + "\x00",
        T[:-1] + ",}",
        '{"a":{"dtype":"F32",}}',
        "{'a':1}",
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},}',
        "{nul}",
        '{"\\x":1}',
        '{"a\x01":1}',
        "{" + "[" * 5000 + "]" * 5000 + "}",
        '{"a":' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
def test_non_json(tmp_path, h):
    refuse(tmp_path, h)


def test_invalid_utf8(tmp_path):
    p = write(tmp_path, blob_from_header(b'{"\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
    with pytest.raises(HeaderError, match="UTF-8"):
        read_header(p)
    p = write(
        tmp_path, blob_from_header(b'{"a\xed\xa0\x80":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    )
    with pytest.raises(HeaderError, match="UTF-8"):
        read_header(p)


def test_overflow(tmp_path):
    refuse(
        tmp_path,
        json.dumps({"a": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}),
        b"",
        code="overflow",
    )
    # partial product overflows even though a later dim is 0 (mirrors checked_mul)
    refuse(
        tmp_path,
        json.dumps({"a": {"dtype": "U8", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}),
        b"",
        code="overflow",
    )
    refuse(tmp_path, json.dumps({"a": {"dtype": "F4", "shape": [2**62], "data_offsets": [0, 0]}}), b"", code="overflow")
    # exactly u64 max numel with a zero dim afterwards: accepted by both
    p = write(
        tmp_path, blob_from_header(json.dumps({"a": {"dtype": "U8", "shape": [2**64 - 1, 0], "data_offsets": [0, 0]}}))
    )
    check_agreement(p, allow_extra=False)
    assert read_header(p)[0][0][2] == (2**64 - 1, 0)


def test_error_message_format(tmp_path):
    p = write(
        tmp_path,
        blob_from_header(json.dumps({"it's\nbad": {"dtype": "bf16", "shape": [1], "data_offsets": [0, 2]}}), b"\0\0"),
        name="we\nird.safetensors",
    )
    with pytest.raises(HeaderError) as ei:
        read_header(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "tensor 'it\\'s\\nbad'" in msg and "; " in msg
    assert isinstance(ei.value, ValueError)


def test_io_error_is_header_error(tmp_path):
    with pytest.raises(HeaderError, match="cannot read file"):
        read_header(str(tmp_path / "missing.safetensors"))


# ---------------------------------------------------------------- hypothesis

NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=12) | st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=4
)  # some control chars
DT = st.sampled_from(sorted(DTYPE_BITS))
SHAPE = st.lists(st.integers(0, 5), max_size=4)


@st.composite
def tensor_lists(draw):
    names = draw(st.lists(NAME.filter(lambda n: n != "__metadata__"), unique=True, max_size=6))
    out = []
    for n in names:
        dt = draw(DT)
        shape = draw(SHAPE)
        bits = DTYPE_BITS[dt]
        if bits < 8:  # make the total whole bytes
            shape = shape + [2 if bits == 4 else 4]
        out.append((n, dt, tuple(shape)))
    return out


@settings(max_examples=150, **SETTINGS)
@given(tensors=tensor_lists(), md=st.none() | st.dictionaries(NAME, NAME, max_size=3), seed=st.integers(0, 2**16))
def test_valid_files_agree(tmp_path, tensors, md, seed):
    p = write(tmp_path, build(tensors, metadata=md, shuffle=random.Random(seed)))
    o, s = check_agreement(p)
    if o[0] == "err":  # only extra-strict refusals allowed, and only for names
        assert o[1].code in ("name-control-char",), str(o[1])
    else:
        assert s[0] == "ok"


JSON_LEAF = st.none() | st.booleans() | st.integers(-3, 2**65) | st.floats(allow_nan=False) | NAME
JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(NAME, c, max_size=3), max_leaves=8)


@st.composite
def mutated(draw):
    tensors = draw(tensor_lists())
    blob = build(tensors, metadata=draw(st.none() | st.dictionaries(NAME, NAME, max_size=2)))
    (n,) = struct.unpack("<Q", blob[:8])
    hdr, data = blob[8 : 8 + n], blob[8 + n :]
    kind = draw(st.sampled_from(["bytes", "json", "field", "data", "prefix"]))
    if kind == "bytes":
        b = bytearray(hdr)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "ins", "del"]))
            i = draw(st.integers(0, max(0, len(b) - 1)))
            if op == "flip" and b:
                b[i] = draw(st.sampled_from(b'{}[]",:0123456789-.eE \\nutlfa\x00\xff\xc3'))
            elif op == "ins":
                b[i:i] = draw(st.binary(min_size=1, max_size=3))
            elif b:
                del b[i]
        hdr = bytes(b)
    elif kind == "json":
        obj = json.loads(hdr)
        if draw(st.booleans()) or not obj:
            obj[draw(NAME)] = draw(JSON)
        else:
            k = draw(st.sampled_from(sorted(obj)))
            obj[k] = draw(JSON)
        hdr = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    elif kind == "field":
        obj = json.loads(hdr)
        keys = [k for k in obj if k != "__metadata__"]
        if keys:
            k = draw(st.sampled_from(keys))
            f = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            if f == "dtype":
                obj[k][f] = draw(DT | st.sampled_from(["bf16", "F8", "F32 ", 5]))
            elif f == "shape":
                obj[k][f] = draw(st.lists(st.integers(-1, 9) | st.sampled_from([1.0, True, 2**64]), max_size=4))
            else:
                a, b = obj[k][f]
                obj[k][f] = [a + draw(st.integers(-5, 5)), b + draw(st.integers(-5, 5))]
        hdr = json.dumps(obj).encode()
    elif kind == "data":
        cut = draw(st.integers(-3, 3))
        data = data[:cut] if cut < 0 else data + b"\0" * cut
    return hdr, data, kind


@settings(max_examples=150, **SETTINGS)
@given(m=mutated())
def test_mutations_differential(tmp_path, m):
    hdr, data, kind = m
    p = write(tmp_path, struct.pack("<Q", len(hdr)) + hdr + data)
    check_agreement(p)  # never any exception but HeaderError; never laxer than safetensors


@settings(max_examples=200, **SETTINGS)
@given(raw=st.binary(max_size=64), extra=st.integers(0, 16))
def test_random_bytes_never_crash(raw, extra):
    try:
        parse_header(raw, 8 + len(raw) + extra, "mem")
    except HeaderError as e:
        assert "\n" not in str(e)


# ---------------------------------------------------------------- streamscan's reader


def test_reader_refuses_up_front_in_one_line_naming_file_and_tensor(tmp_path):
    from streamscan.checkpoint.formats.safetensors import read_header as shard_header
    from streamscan.errors import CheckpointError

    h = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"bf16","shape":[1],"data_offsets":[4,6]}}'
    p = write(tmp_path, blob_from_header(h, b"\0" * 6))
    with pytest.raises(CheckpointError) as err:
        shard_header(Path(p))
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg and "tensor 'b'" in msg and "'BF16'" in msg


def test_reader_keeps_header_order_absolute_offsets_and_fingerprint(tmp_path):
    import hashlib

    from streamscan.checkpoint.formats.safetensors import read_header as shard_header

    h = '{"z":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    p = write(tmp_path, blob_from_header(h, b"abcd"))
    tensors, shard = shard_header(Path(p))
    base = 8 + len(h)
    assert [(t.name, t.start, t.end) for t in tensors] == [("z", base + 2, base + 4), ("a", base, base + 2)]
    assert shard.header_sha256 == hashlib.sha256(h.encode()).hexdigest()
