"""safe_text: names from strangers made safe for the HTML, the embedded JSON and the CSV files we write.

- ``shown``: invisible or reordering characters (bidi overrides and isolates, zero-width characters, other
  format, control, separator, private-use and surrogate code points) become visible ``\\uXXXX`` text, so a
  name reads as what it is (checkpoint names with them are refused at index time; published names reach
  here);
- ``esc``: ``shown``, then HTML-escaped (``< > & " '``), for text and attribute values;
- ``script_json``: JSON for a ``<script type="application/json">`` block that no name can close or turn
  into a comment: ``<``, ``>``, ``&``, U+2028 and U+2029 are written as ``\\uXXXX`` escapes;
- ``csv_cell``: a text cell beginning with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'`` so a
  spreadsheet shows it as text instead of running it as a formula (OWASP's CSV-injection rule).
"""

from __future__ import annotations

import html
import json
import unicodedata

_HIDDEN = frozenset(("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"))
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def shown(text: str) -> str:
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _HIDDEN else c for c in text)


def esc(text) -> str:
    return html.escape(shown(str(text)), quote=True)


def script_json(obj) -> str:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return (
        data.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def csv_cell(value):
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value
