"""json_input: a JSON file from a stranger (a published results JSON, a scan's metrics.json), read strictly.

- size: refused over a stated limit, from ``fstat`` before a byte is read (parsing keeps several times a
  file's bytes, so the limit bounds memory);
- symlinks: with ``nofollow`` (files inside a scan directory) the file is opened ``O_NOFOLLOW`` and a
  symlink is refused;
- duplicate keys are refused naming the key (``object_pairs_hook``), never silently resolved;
- nesting deeper than Python's recursion limit, invalid UTF-8 and syntax errors are refused;
- numbers: integers of more than 18 digits and every float are parsed as floats (a 400-digit literal
  becomes inf, for the caller's range checks), the bare constants ``Infinity``, ``-Infinity`` and ``NaN``
  become ``Constant`` floats that remember their token.
Every refusal is one UsageError line naming the file (and the key when there is one).
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from pathlib import Path

from streamscan.errors import UsageError

MiB = 1 << 20


class Constant(float):
    """A bare ``Infinity``/``-Infinity``/``NaN`` of the file, kept apart from numbers that overflowed."""

    token: str


def _constant(token: str) -> Constant:
    c = Constant(token)
    c.token = token
    return c


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def _number(text: str) -> int | float:
    return int(text) if len(text) <= 18 else float(text)


def text_problem(text: str) -> str | None:
    """Why TEXT (a name or type from a file) cannot be used as text: a lone surrogate (not UTF-8) or a
    control character (None when it can)."""
    if text.isascii() and text.isprintable():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not UTF-8)"
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "holds a control character"
    return None


def read_json(path: str | Path, limit: int, what: str, fix: str, *, nofollow: bool = False):
    """The parsed contents of PATH, a WHAT no larger than LIMIT bytes; FIX ends every refusal."""
    path = Path(path)

    def bad(why: str) -> UsageError:
        return UsageError(f"{path}: {why}; {fix}")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
    except OSError as err:
        if nofollow and os.path.islink(path):
            raise bad("a symlink; streamscan never reads through one in a scan directory: remove it") from None
        raise bad(f"cannot read ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise bad("not a regular file")
        if st.st_size > limit:
            raise bad(f"{st.st_size / MiB:.0f} MiB, over the {limit // MiB} MiB a {what} may have")
        data = fh.read(limit + 1)
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique,
            parse_constant=_constant,
            parse_float=float,
            parse_int=_number,
        )
    except _Duplicate as err:
        raise bad(f"the key {ascii(err.args[0])} appears twice") from None
    except RecursionError:
        raise bad("nested too deeply") from None
    except UnicodeDecodeError as err:
        raise bad(f"not UTF-8 (byte {err.start})") from None
    except ValueError as err:
        raise bad(f"not JSON ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
