"""published: a Spectrum results JSON (``snr_results_{slug}.json``, as the reference and the Spectrum
repository publish them) read as a finished scan, so selections, reports and comparisons work without one.

The reference writes ``json.dump`` output, which holds the bare token ``Infinity`` where the noise sum
was 0: such an entry is a degenerate result (SNR inf, ``noise-sum-0``), ranked first as the reference ranks
it (team decision D2); ``NaN`` (weights it never loaded) is an unscored result with the reason. streamscan's
own strict JSON writes inf as the largest double beside ``"degenerate"``: that is read back as inf.
Shapes are not in the file: results carry an empty shape, and MoE roles come from the names. Results keep
the file's order (ties rank in it, as in the reference and the Axolotl plugin).

The file is read strictly (results/json_input.py): at most PUBLISHED_LIMIT bytes, no duplicate keys, no
deep nesting; every entry needs a name that is text (no lone surrogate, no control character), an ``snr``
that is a number >= 0, ``Infinity``, ``NaN`` or null, and a text ``type`` if any. Anything else is one
line naming the file and the entry.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from streamscan._version import __version__
from streamscan.errors import UsageError
from streamscan.layout import embedding_role
from streamscan.planning.experts import moe_rows
from streamscan.records import DEGENERATE_KINDS, JSON_INF, NOISE_SUM_0, Fingerprint, Result, ScanHeader
from streamscan.results.json_input import Constant, MiB, read_json, text_problem

PUBLISHED_METHOD = "svdvals32"  # the reference's own computation (float32 svdvals)
NAN_REASON = "NaN in the published scan (weights the reference did not load): no SNR"
_SLUG = re.compile(r"^snr_results_(.+)\.json$")


PUBLISHED_LIMIT = 32 * MiB  # ~300k entries (the largest real scan, DeepSeek-V2's, is 3.8 MB)


def is_results_json(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == ".json" and p.is_file()


FIX = "give a scan directory (streamscan run --out) or a snr_results_*.json as the reference writes it"


def _not_results(path: Path, why: str) -> UsageError:
    return UsageError(f"{path}: not a Spectrum results JSON ({why}); {FIX}")


def _bad_entry(path: Path, name: str, why: str) -> UsageError:
    return _not_results(path, f"entry {ascii(name)}: {why}")


def _score(path: Path, name: str, snr) -> tuple[float | None, str | None]:
    """(SNR, reason when unscored) of an entry's ``snr``; anything but a number >= 0 (or the reference's
    bare Infinity or NaN, or null) is refused naming the entry."""
    if isinstance(snr, Constant):
        if snr.token == "NaN":
            return None, NAN_REASON
        if snr.token == "Infinity":  # the reference's noise sum 0: ranked first (D2)
            return math.inf, None
        raise _bad_entry(path, name, f"snr {snr.token}")
    if snr is None:
        return None, "no SNR in the published scan"
    if isinstance(snr, bool) or not isinstance(snr, (int, float)):
        raise _bad_entry(path, name, f"snr is {type(snr).__name__}, not a number")
    if not math.isfinite(snr) or snr < 0:
        raise _bad_entry(path, name, "snr out of range (an SNR is a finite number >= 0)")
    return float(snr), None


def load_published(path: str | Path) -> tuple[ScanHeader, list[Result]]:
    """(header, results in the file's order) of a Spectrum results JSON, read strictly (json_input: size
    limit, duplicate keys, depth); a malformed entry is refused in one line naming it."""
    path = Path(path)
    data = read_json(path, PUBLISHED_LIMIT, "published results JSON", FIX)
    if not isinstance(data, dict) or not data:
        raise _not_results(path, "expected an object of modules")
    results = []
    for name, entry in data.items():
        why = text_problem(name)
        if why:
            raise _bad_entry(path, name, f"the name {why}")
        if not isinstance(entry, dict) or "snr" not in entry:
            raise _bad_entry(path, name, "no 'snr'")
        kind = entry.get("type") or name
        if not isinstance(kind, str) or text_problem(kind):
            raise _bad_entry(path, name, "'type' is not plain text")
        snr, reason = _score(path, name, entry["snr"])
        degenerate = NOISE_SUM_0 if snr == math.inf else None
        if entry.get("degenerate") in DEGENERATE_KINDS and snr == JSON_INF:  # our own strict JSON's inf (D2)
            snr, degenerate = math.inf, entry["degenerate"]
        given = entry.get("reason")
        if isinstance(given, str) and not text_problem(given):
            reason = given if snr is None else None
        results.append(
            Result(
                name=name,
                type=kind,
                shape=(),
                dtype="",
                snr=snr,
                reason=reason,
                status="ok" if snr is not None else "null",
                role=embedding_role(name, (1, 1), {}),
                method=PUBLISHED_METHOD,
                worker="published",
                degenerate=degenerate,
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
