"""metrics_table: every matrix's metrics from its kept spectrum (no rescan), and summaries per type.

- ``metrics.csv`` / ``metrics.json``: one row per journaled matrix: name, type, layer, shape, ``status``
  (``ok``; ``missing spectrum`` when the scan kept none for it, e.g. run with --no-spectra; or the
  journal's reason it has no spectrum), then the fields of compute.metrics.MatrixMetrics.
- ``metrics_by_type.csv`` / ``metrics_by_type.json``: per type, the count, how many have metrics, and the
  median and mean of each metric.
The four are written to temporary files first and renamed together (a full disk leaves the old set whole).
Workers die with the command that started them (``_die_with_parent``). ``read_metrics_json`` reads a
metrics.json back strictly: no symlink, at most METRICS_JSON_LIMIT bytes, every row checked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from streamscan.compute.metrics import FIELDS, matrix_metrics
from streamscan.errors import UsageError
from streamscan.layout import layer_index
from streamscan.records import Result
from streamscan.results.files import write_atomic_many
from streamscan.results.json_input import MiB, read_json, text_problem
from streamscan.results.safe_text import csv_cell
from streamscan.results.spectra import load_spectra

MISSING = "missing spectrum"
SUMMARY_METRICS = (
    "alpha",
    "alpha_weighted",
    "stable_rank",
    "log_spectral_norm",
    "mp_softrank",
    "entropy",
    "effective_rank",
    "snr",
)
COLUMNS = ("name", "type", "layer", "m", "n", "status", *FIELDS)
NAMES = {
    "csv": "metrics.csv",
    "json": "metrics.json",
    "type_csv": "metrics_by_type.csv",
    "type_json": "metrics_by_type.json",
}


METRICS_JSON_LIMIT = 256 * MiB  # ~400k matrices; parsing keeps a few times this
MAX_LAYER = 1 << 31


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the worker dies with PARENT, the command, even when it is SIGKILLed: Linux's
    PR_SET_PDEATHSIG (set in the worker, for the main thread of the command that spawned it) and, on every
    platform, a thread that exits the worker once its parent process is gone."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the prctl
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _chunk_metrics(items: list[tuple[str, object, tuple[int, int], str]]) -> list[tuple[str, dict]]:
    return [(name, matrix_metrics(S, shape, method=method).to_dict()) for name, S, shape, method in items]


def compute_all(items: list[tuple[str, object, tuple[int, int], str]], workers: int | None = None) -> dict[str, dict]:
    """Metrics of every (name, singular values as numpy, shape, scan method), in WORKERS processes (1: this
    one)."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 64:
        return dict(_chunk_metrics(items))
    size = max(16, len(items) // (workers * 8))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    import multiprocessing

    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        return {name: row for part in pool.map(_chunk_metrics, chunks) for name, row in part}


def metrics_rows(results: Iterable[Result], spectra: dict, workers: int | None = None) -> list[dict]:
    """One row per result (in the given order), with its metrics when its spectrum is stored."""
    results = list(results)
    items = [
        (r.name, spectra[r.name].numpy(), (int(r.shape[0]), int(r.shape[1])), r.method)
        for r in results
        if r.name in spectra and len(r.shape) == 2
    ]
    computed = compute_all(items, workers)
    rows = []
    for r in results:
        row: dict = {
            "name": r.name,
            "type": r.type,
            "layer": layer_index(r.name),
            "m": r.shape[0] if r.shape else None,
            "n": r.shape[1] if len(r.shape) > 1 else None,
        }
        found = computed.get(r.name)
        if found is not None:
            row["status"] = "ok"
            row.update(found)
        else:
            row["status"] = MISSING if r.status == "ok" else (r.reason or r.status)
            row.update(dict.fromkeys(FIELDS))
            row["snr"] = _clean(r.snr)  # a degenerate matrix's inf: no number in strict JSON
        rows.append(row)
    return rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def type_summaries(rows: Iterable[dict]) -> list[dict]:
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row)
    out = []
    for t, members in by_type.items():
        entry: dict = {"type": t, "count": len(members), "with_metrics": sum(r["status"] == "ok" for r in members)}
        for key in SUMMARY_METRICS:
            values = [r[key] for r in members if _finite(r[key])]
            entry[f"{key}_median"] = statistics.median(values) if values else None
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
        out.append(entry)
    return out


def _clean(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _csv(rows: list[dict], columns) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else csv_cell(_clean(row.get(k)))) for k in columns})
    return buf.getvalue()


def _json(obj) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def kept_spectra(out_dir: Path, results: Iterable[Result]) -> dict:
    """The good kept spectra of RESULTS, each checked against its matrix's shape (results/spectra.py)."""
    return load_spectra(out_dir, {r.name: tuple(r.shape) for r in results})


def write_metrics(
    out_dir: Path, results: list[Result], dest: Path | None = None, workers: int | None = None
) -> tuple[list[Path], list[dict]]:
    """Compute the metrics of the scan in OUT_DIR from its kept spectra; write the four files to DEST (OUT_DIR)."""
    dest = Path(dest) if dest is not None else Path(out_dir)
    rows = metrics_rows(results, kept_spectra(out_dir, results), workers)
    rows = [{k: _clean(v) for k, v in row.items()} for row in rows]
    summary = type_summaries(rows)
    summary_columns = list(summary[0]) if summary else ["type", "count", "with_metrics"]
    dest.mkdir(parents=True, exist_ok=True)
    paths = write_atomic_many(
        [
            (dest / NAMES["csv"], _csv(rows, COLUMNS)),
            (dest / NAMES["json"], _json({row["name"]: row for row in rows})),
            (dest / NAMES["type_csv"], _csv(summary, summary_columns)),
            (dest / NAMES["type_json"], _json({s["type"]: s for s in summary})),
        ]
    )
    return paths, rows


def _number_problem(v, integer: bool = False) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        return f"{'an integer' if integer else 'a number'} or null expected, not {type(v).__name__}"
    if not math.isfinite(v):
        return "not a finite number"
    return None


def _row_problem(key: str, row) -> str | None:
    """Why ROW (keyed KEY) is not a row streamscan writes to metrics.json (None when it is)."""
    if not isinstance(row, dict):
        return "not an object"
    why = text_problem(key)
    if why:
        return f"its name {why}"
    if row.get("name", key) != key:
        return "its name differs from its key"
    if not isinstance(row.get("type"), str) or text_problem(row["type"]):
        return "no 'type' text"
    if not isinstance(row.get("status", ""), str):
        return "'status' is not text"
    layer = row.get("layer")
    if layer is not None and (_number_problem(layer, True) or not 0 <= layer < MAX_LAYER):
        return f"'layer' is not an integer in [0, {MAX_LAYER})"
    for field in ("m", "n", *FIELDS):
        v = row.get(field)
        if field == "ww_eligible":
            why = None if v is None or isinstance(v, bool) else "not true, false or null"
        else:
            why = _number_problem(v, field in ("m", "n", "matrix_rank", "num_pl_spikes"))
        if why:
            return f"{field!r}: {why}"
    return None


def read_metrics_json(path: Path) -> list[dict]:
    """The rows of a metrics.json (as ``write_metrics`` writes it); anything else is refused in one line
    naming the file and the entry."""
    fix = "rerun `streamscan metrics` to rewrite it"
    data = read_json(path, METRICS_JSON_LIMIT, "metrics.json", fix, nofollow=True)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not an object of rows by matrix name; {fix}")
    for key, row in data.items():
        why = _row_problem(key, row)
        if why:
            raise UsageError(f"{path}: entry {ascii(key)}: {why}; {fix}")
    return list(data.values())
