"""published: a Spectrum results JSON (``snr_results_{slug}.json``, as the reference and the Spectrum
repository publish them) read as a finished scan, so selections, reports and comparisons work without one.

The reference writes ``json.dump`` output, which holds the bare token ``Infinity`` where the noise sum
was 0 (and ``NaN`` for weights it never loaded); those entries become unscored results with the reason.
Shapes are not in the file: results carry an empty shape, and MoE roles come from the names.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from streamscan._version import __version__
from streamscan.errors import UsageError
from streamscan.layout import embedding_role, natural_key
from streamscan.planning.experts import moe_rows
from streamscan.records import Fingerprint, Result, ScanHeader

PUBLISHED_METHOD = "svdvals32"  # the reference's own computation (float32 svdvals)
INFINITY_REASON = "Infinity in the published scan (the reference's noise sum was 0): no SNR"
NAN_REASON = "NaN in the published scan (weights the reference did not load): no SNR"
_SLUG = re.compile(r"^snr_results_(.+)\.json$")


class _Bad(float):
    """A non-finite constant of the file, kept apart from ordinary numbers."""


def is_results_json(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == ".json" and p.is_file()


def _not_results(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path}: not a Spectrum results JSON ({why}); give a scan directory (streamscan run --out) "
        "or a snr_results_*.json as the reference writes it"
    )


def load_published(path: str | Path) -> tuple[ScanHeader, list[Result]]:
    """(header, results in natural name order) of a Spectrum results JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(), parse_constant=lambda c: _Bad(c))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _not_results(path, f"unreadable: {err}") from None
    if not isinstance(data, dict) or not data:
        raise _not_results(path, "expected an object of modules")
    results = []
    for name in sorted(data, key=natural_key):
        entry = data[name]
        if not isinstance(entry, dict) or "snr" not in entry or not isinstance(entry.get("type", ""), str):
            raise _not_results(path, f"entry {name!r} has no 'snr'")
        snr, reason = entry["snr"], entry.get("reason")
        if isinstance(snr, _Bad) or (isinstance(snr, float) and not math.isfinite(snr)):
            snr, reason = None, NAN_REASON if math.isnan(snr) else INFINITY_REASON
        elif snr is not None and (isinstance(snr, bool) or not isinstance(snr, (int, float))):
            raise _not_results(path, f"entry {name!r} has a non-numeric snr")
        elif snr is None:
            reason = reason or "no SNR in the published scan"
        results.append(
            Result(
                name=name,
                type=entry.get("type") or name,
                shape=(),
                dtype="",
                snr=float(snr) if snr is not None else None,
                reason=reason,
                status="ok" if snr is not None else "null",
                role=embedding_role(name, (1, 1), {}),
                method=PUBLISHED_METHOD,
                worker="published",
            )
        )
    m = _SLUG.match(path.name)
    slug = m.group(1) if m else path.stem
    names = tuple(r.name for r in results)
    header = ScanHeader(
        version=__version__,
        fingerprint=Fingerprint(model=slug, shards=((path.name, path.stat().st_size, ""),), method=PUBLISHED_METHOD),
        model=slug,
        slug=slug,
        targets=names,
        experts=tuple(moe_rows(((n, n, (1, 1), None) for n in names), {})),
    )
    return header, results
