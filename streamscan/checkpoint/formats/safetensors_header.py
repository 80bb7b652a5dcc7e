"""safetensors_header: a strict, pure, memory-bounded safetensors header validator (stdlib only).

File layout: 8-byte little-endian u64 ``N``, ``N`` bytes of UTF-8 JSON, then the
data section.  Everything below was checked against the Rust source
(``safetensors/src/tensor.rs``: ``SafeTensors::read_metadata``,
``TryFrom<HashMetadata> for Metadata``, ``Metadata::validate``,
``Dtype::bitsize``) and against the installed wheel (safetensors 0.8.0).

Rules that mirror safetensors (a file breaking one is refused by both):

* file shorter than 8 bytes (``HeaderTooSmall``); ``N > 100_000_000`` -- a
  decimal 100 MB, not 100 MiB (``HeaderTooLarge``); ``8 + N`` beyond the file
  (``InvalidHeaderLength``); header not UTF-8 (``InvalidHeader``); not JSON, or
  not a JSON object (``InvalidHeaderDeserialization``).
* every tensor has ``dtype`` (an exact, case-sensitive name from
  ``DTYPE_BITS``), ``shape`` (list of JSON integers 0..2**64-1; floats, ``1e0``,
  ``-0``, bools, strings refused) and ``data_offsets`` (exactly two such
  integers); duplicate fields inside one tensor are refused (serde
  ``duplicate field``).
* ``__metadata__`` is null or a map of string -> string; it may appear once.
* sorted by ``(start, end)`` the offsets must tile ``[0, data_len)`` exactly:
  first start 0, every start == previous end, end >= start (``InvalidOffset``);
  the last end must equal ``file_size - 8 - N`` -- no trailing bytes, no
  truncation (``MetadataIncompleteBuffer``).  Zero-sized tensors sharing an
  offset are allowed, as in safetensors.
* ``numel`` and ``numel * bits`` are computed left to right and refused as soon
  as they pass 2**64-1 (``ValidationOverflow``, mirrors ``checked_mul``) -- so
  ``[2**40, 2**40, 0]`` is refused although its numel is 0, like safetensors.
* ``numel * bits`` must be a multiple of 8 (``MisalignedSlice``); only the
  total is checked, exactly as safetensors does: F4 ``[2, 3]`` (3 bytes) is
  accepted although a row is 1.5 bytes.
* ``end - start == numel * bits / 8`` (``TensorInvalidInfo``).
* JSON strings with lone surrogates (``"\\ud800"``), NaN/Infinity, trailing
  commas, raw control characters in strings and trailing garbage are refused
  (serde_json refuses them; Python's ``json`` would accept several).

Deliberately stricter than safetensors (codes in ``EXTRA_STRICT``; safetensors
0.8.0 opens such files):

* ``header-start``: the header must start with ``{`` (safetensors' old
  ``InvalidHeaderStart`` check is gone in 0.8; it accepts leading whitespace).
* ``duplicate-key``: duplicate tensor names or ``__metadata__`` keys
  (safetensors silently keeps the last one -- a parser-differential hazard).
* ``unknown-field``: tensor entries with keys other than the three above
  (safetensors ignores them).
* ``entry-not-object``: tensor entries written as JSON arrays
  ``["F32", [1], [0, 4]]`` (serde accepts a sequence for a struct).
* ``name-control-char`` / ``name-too-long``: names with characters of Unicode
  category Cc, Cf, Cs, Zl or Zp (NUL, newline, tab, bidi overrides, ...) or
  longer than ``MAX_NAME_LEN``.
* ``too-many-dims``: more than ``MAX_NDIM`` (64, numpy's limit) dimensions.
* ``metadata-too-large``: more than ``MAX_METADATA_ENTRIES`` metadata pairs.

Memory: the parser is a hand-written scanner over the raw ``bytes`` (no
``json.loads``, no decoded copy of the whole header, no intermediate dict of
all tensors).  Strings are decoded one token at a time, shapes are limited to
``MAX_NDIM`` while they are read, and metadata is limited to
``MAX_METADATA_ENTRIES`` pairs while it is read, so no single value can blow up.
What stays alive is the raw header plus one tuple per tensor.  Measured with
``python bench_memory.py 900000 compact --safetensors`` (fresh subprocess,
ru_maxrss minus RSS after import): 900,000 entries, 99.87 MB header -> peak
RSS increase 352 MB (3.53x the header), 12.2 s; safe_open on the same file:
824 MB.  About 2.5x of it is the result itself (name str + 5-tuple + end int
per entry, ~230 B) and 1x the raw header, so ~3.5x is the floor for this API.
"""

from __future__ import annotations

import os
import re
import struct
import unicodedata
from json.decoder import scanstring as _scanstring  # C implementation

__all__ = [
    "HeaderError",
    "parse_header",
    "read_header",
    "validate_for_safetensors",
    "DTYPE_BITS",
    "EXTRA_STRICT",
    "MAX_HEADER_SIZE",
]

U64_MAX = (1 << 64) - 1
MAX_HEADER_SIZE = 100_000_000  # tensor.rs: const MAX_HEADER_SIZE: usize = 100_000_000
MIN_HEADER_SIZE = 2  # "{}"
MAX_NAME_LEN = 1024
MAX_NDIM = 64
MAX_METADATA_ENTRIES = 65536

# tensor.rs Dtype::bitsize (safetensors 0.8.0).  Exact, case-sensitive names.
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_DTYPE_BY_BYTES = {k.encode("ascii"): (k, v) for k, v in DTYPE_BITS.items()}
_DTYPE_BY_STR = {k: (k, v) for k, v in DTYPE_BITS.items()}

EXTRA_STRICT = frozenset(
    {
        "header-start",
        "duplicate-key",
        "unknown-field",
        "entry-not-object",
        "name-control-char",
        "name-too-long",
        "too-many-dims",
        "metadata-too-large",
    }
)

_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# --------------------------------------------------------------------------
# errors


def _esc(s, limit: int = 120) -> str:
    """repr-like escaping that always yields one printable line."""
    if not isinstance(s, str):
        s = str(s)
    cut = len(s) > limit
    if cut:
        s = s[:limit]
    if s.isprintable() and "\\" not in s and "'" not in s:
        out = s
    else:
        parts = []
        for ch in s:
            if ch == "\\":
                parts.append("\\\\")
            elif ch == "'":
                parts.append("\\'")
            elif ch.isprintable():
                parts.append(ch)
            else:
                parts.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        out = "".join(parts)
    if cut:
        out += "...(truncated)"
    return out


class HeaderError(ValueError):
    """The single exception raised for any bad header.

    ``str(err)`` is one line: ``<path>: tensor '<name>': <what>; <hint>`` (or
    ``<path>: header: <what>; <hint>`` when no tensor is involved).
    ``code`` is a stable short identifier; codes in ``EXTRA_STRICT`` mark
    refusals that safetensors itself would not make.
    """

    def __init__(self, path, tensor, code, what, hint):
        self.path = path
        self.tensor = tensor
        self.code = code
        self.what = what
        self.hint = hint
        where = "header" if tensor is None else f"tensor '{_esc(tensor)}'"
        super().__init__(f"{_esc(path, 300)}: {where}: {what}; {hint}")


# --------------------------------------------------------------------------
# scanner


_WS = re.compile(rb"[ \t\n\r]*")
_STR = re.compile(rb'"((?:[^"\\\x00-\x1f]|\\.)*)"', re.S)
_NUM = re.compile(rb"(-?)(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT = r"(?:0|[1-9][0-9]{0,19})"
# Fast path for the usual entry spelling (safetensors' own writer, or
# json.dumps with default separators).  Anything else goes the slow path;
# both end in the same checks in _Parser._entry.
_FAST = re.compile(
    (
        r'"([^"\\\x00-\x1f]*)"[ ]?:[ ]?\{"dtype"[ ]?:[ ]?"([A-Z0-9_]{1,16})",[ ]?'
        r'"shape"[ ]?:[ ]?\[((?:INT(?:,[ ]?INT)*)?)\],[ ]?'
        r'"data_offsets"[ ]?:[ ]?\[(INT),[ ]?(INT)\]\}'
    )
    .replace("INT", _INT)
    .encode("ascii")
)
_JSON_LIT = ((b"true", "a boolean"), (b"false", "a boolean"), (b"null", "null"))


class _Parser:
    __slots__ = ("raw", "n", "pos", "path", "data_len", "entries", "_shapes", "_last_end")

    def __init__(self, raw: bytes, path: str, data_len: int):
        self.raw = raw
        self.n = len(raw)
        self.pos = 0
        self.path = path
        self.data_len = data_len
        self.entries = []
        self._shapes = {}
        self._last_end = None

    # -- helpers -----------------------------------------------------------
    def fail(self, tensor, code, what, hint):
        raise HeaderError(self.path, tensor, code, what, hint)

    def json_fail(self, tensor, what):
        self.fail(
            tensor,
            "json",
            f"invalid JSON at header byte {self.pos}: {what}",
            "the header is corrupt or was not written by a safetensors writer",
        )

    def ws(self):
        raw, pos = self.raw, self.pos
        if pos < self.n and raw[pos] in b" \t\n\r":
            self.pos = _WS.match(raw, pos).end()

    def peek(self) -> int:
        return self.raw[self.pos] if self.pos < self.n else -1

    def expect(self, ch: int, tensor, what: str):
        self.ws()
        if self.peek() != ch:
            got = "end of header" if self.pos >= self.n else f"{chr(self.raw[self.pos])!a}"
            self.json_fail(tensor, f"expected {what}, found {got}")
        self.pos += 1
        self.ws()

    def string(self, tensor, what: str, max_bytes: int = 0) -> str:
        if self.peek() != 0x22:
            self.json_fail(tensor, f"expected {what} (a JSON string)")
        m = _STR.match(self.raw, self.pos)
        if m is None:
            self.json_fail(tensor, f"unterminated {what} or raw control character inside it")
        body = m.group(1)
        text = self.decode(tensor, body, what, max_bytes)
        if 0x5C in body:  # backslash: JSON escapes present
            try:
                text, _ = _scanstring(text + '"', 0, True)
            except ValueError as e:
                self.json_fail(tensor, f"bad escape in {what}: {e.msg if hasattr(e, 'msg') else e}")
            if _SURROGATE.search(text):
                self.json_fail(tensor, f"lone UTF-16 surrogate escape in {what}")
        self.pos = m.end()
        return text

    def decode(self, tensor, body: bytes, what: str, max_bytes: int = 0) -> str:
        """BODY (the raw bytes of WHAT, a JSON string) as UTF-8; refused past MAX_BYTES when one is given."""
        if max_bytes and len(body) > max_bytes:
            self.fail(
                tensor,
                "name-too-long",
                f"{what} is {len(body)} bytes long (limit {MAX_NAME_LEN} characters)",
                "rename the tensor",
            )
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(
                tensor,
                "utf8",
                f"header is not valid UTF-8 ({e.reason} in {what})",
                "the header is corrupt; re-export the file",
            )

    def describe_value(self) -> str:
        c = self.peek()
        if c == 0x22:
            return "a string"
        if c == 0x5B:
            return "a list"
        if c == 0x7B:
            return "an object"
        for lit, desc in _JSON_LIT:
            if self.raw.startswith(lit, self.pos):
                return desc
        if c == -1:
            return "end of header"
        return f"{chr(c)!a}"

    def integer(self, tensor, field: str) -> int:
        """One JSON integer in 0..2**64-1 (serde usize on 64-bit)."""
        m = _NUM.match(self.raw, self.pos)
        hint = f"{field} must hold non-negative integers"
        if m is None:
            self.fail(tensor, "bad-type", f"{field} contains {self.describe_value()}, not an integer", hint)
        sign, digits, frac, exp = m.groups()
        text = _esc(m.group(0).decode("ascii"), 40)
        if frac or exp:
            self.fail(tensor, "bad-type", f"{field} contains the number {text}, which JSON-parses as a float", hint)
        if sign:
            self.fail(tensor, "bad-value", f"{field} contains the negative number {text}", hint)
        if len(digits) > 20 or int(digits) > U64_MAX:
            self.fail(tensor, "overflow", f"{field} contains {text}, larger than 2**64-1", hint)
        self.pos = m.end()
        return int(digits)

    def int_list(self, tensor, field: str, max_len: int):
        if self.peek() != 0x5B:
            self.fail(
                tensor,
                "bad-type",
                f"{field} is {self.describe_value()}, not a list",
                f"{field} must be a JSON list of integers",
            )
        self.pos += 1
        self.ws()
        out = []
        if self.peek() == 0x5D:
            self.pos += 1
            return out
        while True:
            out.append(self.integer(tensor, field))
            if len(out) > max_len:
                if field == "shape":
                    self.fail(
                        tensor,
                        "too-many-dims",
                        f"shape has more than {MAX_NDIM} dimensions",
                        "no real tensor has this many dimensions; the header is corrupt or hostile",
                    )
                self.fail(
                    tensor,
                    "bad-value",
                    f"{field} has more than {max_len} elements",
                    "data_offsets must be [start, end]",
                )
            self.ws()
            c = self.peek()
            if c == 0x2C:
                self.pos += 1
                self.ws()
            elif c == 0x5D:
                self.pos += 1
                return out
            else:
                self.json_fail(tensor, f"expected ',' or ']' in {field}")

    # -- grammar -----------------------------------------------------------
    def parse(self):
        raw = self.raw
        metadata = None
        seen_meta = False
        if raw[:1] != b"{":
            self.ws()
            if self.peek() == 0x7B:
                self.fail(
                    None,
                    "header-start",
                    "header starts with whitespace instead of '{'",
                    "re-save the file with a standard safetensors writer",
                )
            self.fail(
                None,
                "not-object",
                "header does not start with '{' (not a JSON object)",
                "this is not a safetensors file, or its length prefix is wrong",
            )
        self.pos = 1
        self.ws()
        if self.peek() == 0x7D:
            self.pos += 1
        else:
            fast = _FAST.match
            while True:
                m = fast(raw, self.pos)
                if m is not None:
                    self.pos = m.end()
                    self._fast_entry(m)
                else:
                    if self.peek() != 0x22:
                        self.json_fail(None, "expected a tensor name (a JSON string)")
                    name = self.string(None, "tensor name", 4 * MAX_NAME_LEN)
                    self.expect(0x3A, name, "':' after the tensor name")
                    if name == "__metadata__":
                        if seen_meta:
                            self.fail(
                                None, "duplicate-key", "'__metadata__' appears twice", "merge the two metadata maps"
                            )
                        seen_meta = True
                        metadata = self.metadata()
                    else:
                        self.slow_entry(name)
                self.ws()
                c = self.peek()
                if c == 0x2C:
                    self.pos += 1
                    self.ws()
                    continue
                if c == 0x7D:
                    self.pos += 1
                    break
                self.json_fail(None, "expected ',' or '}' after a tensor entry")
        self.ws()
        if self.pos != self.n:
            self.json_fail(None, "trailing characters after the JSON object (only spaces may pad the header)")
        return metadata

    def metadata(self):
        if self.raw.startswith(b"null", self.pos):
            self.pos += 4
            return None
        hint = "__metadata__ must be a JSON object mapping strings to strings"
        if self.peek() != 0x7B:
            self.fail(None, "bad-metadata", f"__metadata__ is {self.describe_value()}", hint)
        self.pos += 1
        self.ws()
        out = {}
        if self.peek() == 0x7D:
            self.pos += 1
            return out
        while True:
            key = self.string(None, "__metadata__ key")
            self.expect(0x3A, None, "':' in __metadata__")
            if self.peek() != 0x22:
                self.fail(
                    None,
                    "bad-metadata",
                    f"__metadata__[{_esc(key, 60)!s}] is {self.describe_value()}, not a string",
                    hint,
                )
            val = self.string(None, "__metadata__ value")
            if key in out:
                self.fail(
                    None,
                    "duplicate-key",
                    f"__metadata__ key '{_esc(key, 60)}' appears twice",
                    "keep one value per metadata key",
                )
            if len(out) >= MAX_METADATA_ENTRIES:
                self.fail(
                    None,
                    "metadata-too-large",
                    f"__metadata__ has more than {MAX_METADATA_ENTRIES} entries",
                    "metadata is meant for a few short strings",
                )
            out[key] = val
            self.ws()
            c = self.peek()
            if c == 0x2C:
                self.pos += 1
                self.ws()
            elif c == 0x7D:
                self.pos += 1
                return out
            else:
                self.json_fail(None, "expected ',' or '}' in __metadata__")

    def slow_entry(self, name):
        c = self.peek()
        if c != 0x7B:
            code = "entry-not-object" if c == 0x5B else "bad-type"
            self.fail(
                name,
                code,
                f"entry is {self.describe_value()}, not an object",
                'write {"dtype": ..., "shape": [...], "data_offsets": [start, end]}',
            )
        self.pos += 1
        self.ws()
        dtype = shape = offsets = None
        seen = set()
        if self.peek() != 0x7D:
            while True:
                key = self.string(name, "field name")
                self.expect(0x3A, name, "':' after a field name")
                if key in seen:
                    self.fail(
                        name,
                        "duplicate-key",
                        f"field '{_esc(key, 40)}' appears twice",
                        "each tensor entry has one dtype, shape and data_offsets",
                    )
                seen.add(key)
                if key == "dtype":
                    if self.peek() != 0x22:
                        self.fail(
                            name,
                            "bad-type",
                            f"dtype is {self.describe_value()}, not a string",
                            'use a dtype name such as "F32" or "BF16"',
                        )
                    dtype = self.string(name, "dtype")
                elif key == "shape":
                    shape = self.int_list(name, "shape", MAX_NDIM)
                elif key == "data_offsets":
                    offsets = self.int_list(name, "data_offsets", 2)
                else:
                    self.fail(
                        name,
                        "unknown-field",
                        f"unknown field '{_esc(key, 40)}'",
                        "only dtype, shape and data_offsets are allowed",
                    )
                self.ws()
                c = self.peek()
                if c == 0x2C:
                    self.pos += 1
                    self.ws()
                elif c == 0x7D:
                    break
                else:
                    self.json_fail(name, "expected ',' or '}' in a tensor entry")
        self.pos += 1
        for field, val in (("dtype", dtype), ("shape", shape), ("data_offsets", offsets)):
            if val is None:
                self.fail(
                    name, "missing-field", f"missing field '{field}'", "each entry needs dtype, shape and data_offsets"
                )
        if len(offsets) != 2:
            self.fail(
                name,
                "bad-value",
                f"data_offsets has {len(offsets)} elements, not 2",
                "data_offsets must be [start, end]",
            )
        dt = _DTYPE_BY_STR.get(dtype)
        if dt is None:
            self._bad_dtype(name, dtype)
        self._entry(name, dt, tuple(shape), offsets[0], offsets[1])

    def _bad_dtype(self, name, dtype):
        hint = "known dtypes: " + " ".join(DTYPE_BITS)
        if isinstance(dtype, str) and dtype.upper() in DTYPE_BITS:
            hint = f"dtype names are case-sensitive: write {dtype.upper()!r}"
        self.fail(name, "bad-dtype", f"unknown dtype '{_esc(dtype, 40)}'", hint)

    def _fast_entry(self, m):
        name_b, dtype_b, shape_b, s_b, e_b = m.groups()
        name = self.decode(None, name_b, "tensor name", 4 * MAX_NAME_LEN)
        if name == "__metadata__":
            self.fail(
                None,
                "bad-metadata",
                "__metadata__ is an object that is not a string map",
                "__metadata__ must be a JSON object mapping strings to strings",
            )
        dt = _DTYPE_BY_BYTES.get(dtype_b)
        if dt is None:
            self._bad_dtype(name, dtype_b.decode("ascii"))
        if shape_b:
            if shape_b.count(b",") >= MAX_NDIM:
                self.fail(
                    name,
                    "too-many-dims",
                    f"shape has more than {MAX_NDIM} dimensions",
                    "no real tensor has this many dimensions; the header is corrupt or hostile",
                )
            shape = tuple(map(int, shape_b.split(b",")))
        else:
            shape = ()
        self._entry(name, dt, shape, int(s_b), int(e_b))

    def _entry(self, name, dt, shape, start, end):
        if len(name) > MAX_NAME_LEN:
            self.fail(
                name,
                "name-too-long",
                f"name is {len(name)} characters long (limit {MAX_NAME_LEN})",
                "rename the tensor",
            )
        if not name.isprintable():
            for ch in name:
                cat = unicodedata.category(ch)
                if cat in _BAD_NAME_CATEGORIES:
                    self.fail(
                        name,
                        "name-control-char",
                        f"name contains the control/format character U+{ord(ch):04X} (category {cat})",
                        "tensor names must be printable; rename the tensor",
                    )
        dtype, bits = dt
        for v in (start, end) + shape:
            if v > U64_MAX:
                self.fail(name, "overflow", f"value {v} is larger than 2**64-1", "the header is corrupt")
        # numel * bits, refusing as soon as a partial product passes u64
        # (Metadata::validate: try_fold(1, checked_mul), then checked_mul(bitsize)).
        numel = 1
        for d in shape:
            numel *= d
            if numel > U64_MAX:
                self.fail(
                    name,
                    "overflow",
                    f"shape {list(shape)} overflows 64-bit element count",
                    "the shape is corrupt or hostile",
                )
        nbits = numel * bits
        if nbits > U64_MAX:
            self.fail(
                name,
                "overflow",
                f"shape {list(shape)} x {bits} bits overflows 64 bits",
                "the shape is corrupt or hostile",
            )
        if nbits % 8:
            self.fail(
                name,
                "misaligned",
                f"{numel} elements of {dtype} ({bits} bits) is {nbits} bits, not a whole number of bytes",
                "pad the tensor so its total size is whole bytes",
            )
        if end < start:
            self.fail(
                name,
                "bad-offset",
                f"data_offsets [{start}, {end}] end before start",
                "data_offsets must be [start, end] with start <= end",
            )
        if end - start != nbits // 8:
            self.fail(
                name,
                "size-mismatch",
                f"data_offsets [{start}, {end}] span {end - start} bytes but {dtype}{list(shape)} needs {nbits // 8}",
                "shape, dtype and data_offsets disagree; the header is corrupt",
            )
        if end > self.data_len:
            self.fail(
                name,
                "truncated",
                f"data_offsets end {end} is past the data section ({self.data_len} bytes)",
                "the file is truncated or the header is corrupt; re-download it",
            )
        # memory: share repeated shape tuples and the previous end int
        shapes = self._shapes
        cached = shapes.get(shape)
        if cached is not None:
            shape = cached
        elif len(shapes) < 4096:
            shapes[shape] = shape
        last = self._last_end
        if last is not None and last == start:
            start = last
        self._last_end = end
        self.entries.append((name, dtype, shape, start, end))

    def finish(self):
        entries = self.entries
        names = sorted([e[0] for e in entries])
        for i in range(1, len(names)):
            if names[i] == names[i - 1]:
                self.fail(
                    names[i],
                    "duplicate-key",
                    "tensor name appears twice in the header",
                    "each tensor name must be unique (safetensors silently keeps the last one)",
                )
        del names
        # (start, end) order without building key tuples: two stable sorts of a copy (the caller gets the
        # header's own order).
        ordered = sorted(entries, key=_get_end)
        ordered.sort(key=_get_start)
        expect = 0
        for name, _dt, _sh, start, end in ordered:
            if start != expect:
                if start > expect:
                    self.fail(
                        name,
                        "gap",
                        f"data starts at {start} but the previous tensor ends at {expect} "
                        f"({start - expect} uncovered bytes)",
                        "tensors must be packed back to back from offset 0",
                    )
                self.fail(
                    name,
                    "overlap",
                    f"data [{start}, {end}] overlaps bytes before {expect}",
                    "tensors must not share bytes",
                )
            expect = end
        del ordered
        if expect != self.data_len:
            self.fail(
                None,
                "incomplete-buffer",
                f"tensors cover {expect} bytes but the data section has {self.data_len} "
                f"({self.data_len - expect} trailing bytes)",
                "the file has extra bytes after the last tensor or is the wrong file",
            )
        return entries


def _get_start(e):
    return e[3]


def _get_end(e):
    return e[4]


# --------------------------------------------------------------------------
# public API


def parse_header(raw: bytes, file_size: int, path: str = "<memory>"):
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes.

    Returns ``(entries, metadata)``: ``entries`` is a list of
    ``(name, dtype, shape_tuple, start, end)`` in the header's order
    (offsets relative to the data section, which starts at ``8 + len(raw)``);
    ``metadata`` is a ``dict[str, str]`` or ``None`` when absent/null.
    Raises only ``HeaderError``.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise HeaderError(
            path, None, "bad-input", f"raw header is {type(raw).__name__}, not bytes", "pass the header bytes"
        )
    raw = bytes(raw)
    n = len(raw)
    if n < MIN_HEADER_SIZE:
        raise HeaderError(
            path,
            None,
            "header-too-small",
            f"header length {n} is below 2 bytes",
            "the smallest header is '{}'; the file is corrupt",
        )
    if n > MAX_HEADER_SIZE:
        raise HeaderError(
            path,
            None,
            "header-too-large",
            f"header length {n} exceeds {MAX_HEADER_SIZE} bytes",
            "safetensors refuses headers over 100 MB",
        )
    data_len = file_size - 8 - n
    if data_len < 0:
        raise HeaderError(
            path,
            None,
            "header-length",
            f"8 + header length {n} exceeds the file size {file_size}",
            "the file is truncated or the length prefix is corrupt",
        )
    p = _Parser(raw, path, data_len)
    try:
        metadata = p.parse()
        entries = p.finish()
    except HeaderError:
        raise
    except (RecursionError, MemoryError, ValueError, IndexError, TypeError) as e:  # defensive
        raise HeaderError(
            path, None, "internal", f"unexpected {type(e).__name__} while parsing", "treat the file as corrupt"
        ) from None
    return entries, metadata


def read_header(path):
    """Open ``path``, check the 8-byte length prefix and parse the header.

    Reads exactly ``8 + N`` bytes; never touches the data section.
    Returns ``(entries, metadata, data_start)`` where ``data_start = 8 + N``
    is the absolute file offset of the data section.
    """
    spath = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeaderError(
                    spath,
                    None,
                    "header-too-small",
                    f"file is {size} bytes, shorter than the 8-byte length prefix",
                    "this is not a safetensors file",
                )
            (n,) = struct.unpack("<Q", prefix)
            if n < MIN_HEADER_SIZE:
                raise HeaderError(
                    spath,
                    None,
                    "header-too-small",
                    f"header length {n} is below 2 bytes",
                    "the smallest header is '{}'; the file is corrupt",
                )
            if n > MAX_HEADER_SIZE:
                raise HeaderError(
                    spath,
                    None,
                    "header-too-large",
                    f"header length {n} exceeds {MAX_HEADER_SIZE} bytes",
                    "safetensors refuses headers over 100 MB; the prefix is probably corrupt",
                )
            if 8 + n > size:
                raise HeaderError(
                    spath,
                    None,
                    "header-length",
                    f"8 + header length {n} exceeds the file size {size}",
                    "the file is truncated or the length prefix is corrupt",
                )
            raw = f.read(n)
            if len(raw) != n:
                raise HeaderError(
                    spath,
                    None,
                    "header-length",
                    f"short read: got {len(raw)} of {n} header bytes",
                    "the file changed while being read; retry",
                )
    except OSError as e:
        raise HeaderError(
            spath, None, "io", f"cannot read file: {e.strerror or e}", "check the path and permissions"
        ) from None
    entries, metadata = parse_header(raw, size, spath)
    return entries, metadata, 8 + n


def validate_for_safetensors(path):
    """Up-front gate for a shard before any byte-range read.

    Policy (documented decision): a shard that safetensors itself would refuse
    -- unknown dtype, bad offsets, incomplete buffer, ... -- is refused here in
    one line, before any tensor bytes are fetched.  Byte-range reads of such a
    shard would still be *possible* for the well-formed entries (the offsets of
    other tensors are just numbers), but nothing downstream (``safe_open``,
    ``load_file``, transformers) can load the shard, so streaming its bytes only
    wastes bandwidth and pushes the failure later.  For an unknown dtype in
    particular the element size is unknown, so neither the tiling check nor
    the size of that tensor can be verified, and a range read of it would be
    a guess.  Files refused only for an ``EXTRA_STRICT`` reason (e.g. duplicate
    names) are also refused: they are ambiguous across parsers.

    Returns ``read_header(path)``'s result; raises ``HeaderError``.
    """
    return read_header(path)
