"""safetensors headers: local files validated by safetensors' ``safe_open``, remote headers by
``safetensors_header.check_header``, which must accept exactly what ``safe_open`` accepts (explicit cases and
hypothesis differential tests against the installed safetensors), and both read alike."""

import hashlib
import json
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from streamscan.checkpoint.formats.safetensors import parse_header, read_header
from streamscan.checkpoint.formats.safetensors_header import MAX_HEADER_SIZE, HeaderError, check_header, dtype_bits
from streamscan.errors import CheckpointError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
]  # fmt: skip


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * dtype_bits(dtype) // 8


def build(tensors, metadata=None, shuffle=None, sep=(",", ":")):
    """tensors: list of (name, dtype, shape) -> file bytes, tensors packed in list order."""
    hdr, off, data = {}, 0, []
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = nbytes(dt, shape)
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        data.append(bytes((i * 7) % 256 for i in range(n)))
        off += n
    items = list(hdr.items())
    if shuffle is not None:
        shuffle.shuffle(items)
    raw = json.dumps(dict(items), separators=sep).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(data)


def blob(raw_header, data=b""):
    if isinstance(raw_header, str):
        raw_header = raw_header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw_header)) + raw_header + data


def st_open(path):
    """safetensors' verdict: ('ok', [(name, dtype, shape)] in offset order, metadata) or ('err', message)."""
    try:
        with safe_open(path, framework="numpy") as f:
            rows = [(k, f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.offset_keys()]
            return "ok", rows, f.metadata()
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        return "err", f"{type(e).__name__}: {e}"


def remote(data: bytes):
    """check_header's verdict on the file's bytes, as hub.py gives them (or None when the length prefix is
    refused before the header is read, as hub.py does)."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_SIZE, len(data) - 8):
        return None
    try:
        return check_header(data[8 : 8 + n], len(data))
    except HeaderError as err:
        assert "\n" not in str(err) and "\r" not in str(err)
        return err


def agree(tmp_path, data: bytes, name="f.safetensors"):
    """The differential property: remote check, safetensors and the local reader agree; returns the verdict."""
    p = tmp_path / name
    p.write_bytes(data)
    verdict = st_open(str(p))
    ours = remote(data)
    if verdict[0] == "ok":
        assert isinstance(ours, list), f"check_header refused what safetensors opens: {ours}"
        assert sorted((e[0], e[1], e[2]) for e in ours) == sorted(verdict[1])
        zero_ties = {e[0] for e in ours if e[3] == e[4]}
        assert [e[0] for e in ours if e[0] not in zero_ties] == [r[0] for r in verdict[1] if r[0] not in zero_ties]
        local, shard = read_header(p)
        remote_infos, remote_shard = parse_header(p, data[8 : 8 + struct.unpack("<Q", data[:8])[0]], len(data))
        assert local == remote_infos and shard == remote_shard  # one fingerprint, one order, one byte range
        for info in local:
            assert info.end - info.start == nbytes(info.dtype, info.shape)
    else:
        assert not isinstance(ours, list), f"check_header accepted what safetensors refuses: {verdict[1]}"
        with pytest.raises(CheckpointError) as err:
            read_header(p)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{p}: ") and "re-download" in msg
    return verdict


# ---------------------------------------------------------------- valid files


def test_all_dtypes_round_trip_with_the_bytes_safetensors_reads(tmp_path):
    tensors = [(f"t{i}.{dt}", dt, (2, 4)) for i, dt in enumerate(DTYPES)]
    tensors += [("empty", "F32", (0, 3)), ("scalar", "F64", ())]
    data = build(tensors, metadata={"format": "pt", "k": "v\nmultiline"})
    assert agree(tmp_path, data)[2] == {"format": "pt", "k": "v\nmultiline"}
    infos, _ = read_header(tmp_path / "f.safetensors")
    with safe_open(str(tmp_path / "f.safetensors"), framework="numpy") as f:
        for info in infos:
            if info.dtype in ("F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL"):
                assert f.get_tensor(info.name).tobytes() == data[info.start : info.end]


def test_dtype_widths_come_from_safetensors():
    assert [dtype_bits(d) for d in ("F4", "F6_E2M3", "BF16", "F32", "C64")] == [4, 6, 16, 32, 64]
    assert dtype_bits("Q7") is None and dtype_bits("bf16") is None


def test_writer_outputs(tmp_path):
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    save_file(
        {"b": np.zeros((3, 5), np.float16), "a": np.ones(7, np.int64), "z": np.zeros(0, np.float32)},
        str(tmp_path / "n"),
    )
    agree(tmp_path, (tmp_path / "n").read_bytes())
    save_torch(
        {"w": torch.zeros(4, 4, dtype=torch.bfloat16), "f8": torch.zeros(8, dtype=torch.float8_e4m3fn)},
        str(tmp_path / "t"),
    )
    assert {r[1] for r in agree(tmp_path, (tmp_path / "t").read_bytes())[1]} == {"BF16", "F8_E4M3"}


@pytest.mark.parametrize(
    "header, data",
    [
        ("{}", b""),
        ("{}      ", b""),
        ("  \n" + '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),  # leading whitespace
        ('{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
        ('{"a":{"data_offsets":[0,4],"shape":[1],"dtype":"F32","extra":[1.5,{"x":null}]}}', b"\0" * 4),
        ('{"a":["F32",[1],[0,4]]}', b"\0" * 4),  # serde reads a struct from a 3-element list
        ('{"__metadata__":{"dtype":"x","shape":"y","data_offsets":"z"}}', b""),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        ('{"__metadata__":{"x":"1","x":"2"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        ('{"\\u00e9t\\u00e9":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}}', b"\0" * 5),
        ('{"a":{"dtype":"U8","shape":[18446744073709551615,0],"data_offsets":[0,0]}}', b""),
        ('{"a":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}', b"\0" * 3),
        ('{"a\\nb":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),  # names are data (index refuses)
    ],
)  # fmt: skip
def test_accepted_like_safetensors(tmp_path, header, data):
    assert agree(tmp_path, blob(header, data))[0] == "ok"


# ---------------------------------------------------------------- refused files

T = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def entry(shape="[1]", offsets="[0,4]", dtype='"F32"'):
    return f'{{"a":{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}}}}}'


@pytest.mark.parametrize(
    "header, data",
    [
        *[(entry(shape=s), b"\0" * 4) for s in ("[-1]", "[-0]", "[1.0]", "[1e0]", "[true]", "[null]", '["1"]', "[[1]]", "1",
                                                 "[18446744073709551616]", "[+1]", "[" + "9" * 5000 + "]", "[1,]", "[NaN]")],
        *[(entry(offsets=o), b"\0" * 4) for o in ("[0]", "[0,4,4]", "[0,true]", "[0,4.0]", "[4,0]", '{"0":4}', "[-4,0]")],
        *[(entry(dtype=json.dumps(d)), b"\0" * 4) for d in ("bf16", "Q7", "C128", "F8_E3M4", "I4", "", "F32 ", 32)],
        ('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        ('{"__metadata__":{},"__metadata__":{},' + T[1:], b"\0" * 4),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
        ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b"\0" * 12),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}', b"\0" * 4),
        *[('{"__metadata__":' + m + "," + T[1:], b"\0" * 4) for m in ('{"x":1}', '["x"]', '"x"', '{"x":null}', '{"x":{"y":"z"}}', "1")],
        ('{"__metadata__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b""),
        ('{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":"\\udc00"}}', b"\0" * 4),
        ('{"a":{"dtype":"F32","data_offsets":[0,4]}}', b"\0" * 4),
        ('{"a":"F32"}', b"\0" * 4),
        ('{"a":["F32",[1]]}', b"\0" * 4),
        ("[]", b""),
        ("\ufeff" + T, b"\0" * 4),
        (T, b"\0" * 3),
        (T, b"\0" * 5),
        ("{}", b"x"),
        *[(h, b"\0" * 4) for h in ("{", "{}}", '{"a"}', '{"a":}', T[:-1], T + "x", T + "\x00", T[:-1] + ",}", "{'a':1}",
                                   '{"a":1,}', '{"\\x":1}', '{"a\x01":1}', "{" + "[" * 5000 + "]" * 5000 + "}",
                                   '{"a":' + "[" * 5000 + "]" * 5000 + "}", '{"a":Infinity}')],
        (b'{"\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        (b'{"a\xed\xa0\x80":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        (entry(shape="[4294967296,4294967296]", offsets="[0,0]"), b""),
        ('{"a":{"dtype":"U8","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]}}', b""),  # checked_mul
        ('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"\0" * 2),
    ],
)  # fmt: skip
def test_refused_like_safetensors(tmp_path, header, data):
    assert agree(tmp_path, blob(header, data))[0] == "err"


@pytest.mark.parametrize(
    "prefix",
    [b"", b"\x01\x00", struct.pack("<Q", 0), struct.pack("<Q", 1) + b"{", struct.pack("<Q", 100_000_001) + b"{}",
     struct.pack("<Q", 2**64 - 1), struct.pack("<Q", 1000) + b"{}"],
)  # fmt: skip
def test_bad_length_prefix_is_refused_before_the_header_is_read(tmp_path, prefix):
    assert agree(tmp_path, prefix)[0] == "err"


def test_one_line_naming_the_file_and_the_tensor(tmp_path):
    h = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"it\'s\\nbad":{"dtype":"bf16","shape":[1],"data_offsets":[4,6]}}'
    p = tmp_path / "f.safetensors"
    p.write_bytes(blob(h, b"\0" * 6))
    with pytest.raises(CheckpointError) as err:
        parse_header(p, h.encode(), 8 + len(h) + 6)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ") and 'tensor "it\'s\\nbad": unknown dtype "bf16"' in msg
    with pytest.raises(CheckpointError, match="cannot read"):
        read_header(tmp_path / "missing.safetensors")


def test_reader_lists_tensors_in_file_order_with_absolute_offsets_and_the_header_hash(tmp_path):
    h = '{"z":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    p = tmp_path / "f.safetensors"
    p.write_bytes(blob(h, b"abcd"))
    tensors, shard = read_header(p)
    base = 8 + len(h)
    assert [(t.name, t.start, t.end) for t in tensors] == [("a", base, base + 2), ("z", base + 2, base + 4)]
    assert shard.header_sha256 == hashlib.sha256(h.encode()).hexdigest() and shard.size == base + 4


# ---------------------------------------------------------------- hypothesis

NAME = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
DT = st.sampled_from(DTYPES)
SHAPE = st.lists(st.integers(0, 5), max_size=4)


@st.composite
def tensor_lists(draw):
    names = draw(st.lists(NAME.filter(lambda n: n != "__metadata__"), unique=True, max_size=6))
    out = []
    for n in names:
        dt = draw(DT)
        shape = draw(SHAPE)
        if dtype_bits(dt) < 8:  # make the total whole bytes
            shape = shape + [2 if dtype_bits(dt) == 4 else 4]
        out.append((n, dt, tuple(shape)))
    return out


@settings(max_examples=100, **SETTINGS)
@given(tensors=tensor_lists(), md=st.none() | st.dictionaries(NAME, NAME, max_size=3), seed=st.integers(0, 2**16))
def test_valid_files_agree(tmp_path, tensors, md, seed):
    sep = [(",", ":"), (", ", ": ")][seed % 2]
    assert agree(tmp_path, build(tensors, metadata=md, shuffle=random.Random(seed), sep=sep))[0] == "ok"


JSON_LEAF = st.none() | st.booleans() | st.integers(-3, 2**65) | st.floats() | NAME
JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(NAME, c, max_size=3), max_leaves=8)


@st.composite
def mutated(draw):
    tensors = draw(tensor_lists())
    data = build(tensors, metadata=draw(st.none() | st.dictionaries(NAME, NAME, max_size=2)))
    (n,) = struct.unpack("<Q", data[:8])
    hdr, body = data[8 : 8 + n], data[8 + n :]
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
            obj[draw(st.sampled_from(sorted(obj)))] = draw(JSON)
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
        body = body[:cut] if cut < 0 else body + b"\0" * cut
    else:
        n = max(0, n + draw(st.integers(-3, 3)))
    return struct.pack("<Q", n) + hdr + body


@settings(max_examples=150, **SETTINGS)
@given(data=mutated())
def test_mutations_differential(tmp_path, data):
    agree(tmp_path, data)  # never an exception but HeaderError; accepted exactly when safetensors accepts


@settings(max_examples=200, **SETTINGS)
@given(raw=st.binary(max_size=64), extra=st.integers(0, 16))
def test_random_bytes_never_crash(raw, extra):
    try:
        check_header(raw, 8 + len(raw) + extra)
    except HeaderError as e:
        assert "\n" not in str(e)


def test_names_with_control_characters_are_refused_by_the_index(tmp_path):
    from streamscan.checkpoint.index import build_index
    from streamscan.checkpoint.source import resolve

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "model.safetensors").write_bytes(blob(json.dumps({"a\u202eb": json.loads(T)["a"]}), b"\0" * 4))
    with pytest.raises(CheckpointError, match="U\\+202E"):
        build_index(resolve(tmp_path / "ck"))
