"""records: the data that flows between the stages, as frozen dataclasses (stdlib only).

Checkpoint -> planning -> compute -> results: ``TensorInfo``/``ShardInfo``/``Quant`` describe what is stored,
``Part`` and ``Job`` what is scored, ``Result`` what became of it, ``ExpertRow`` its MoE role. The scan's
options, its journal header and its summary are ``ScanOptions``, ``ScanHeader`` and ``ScanSummary``; their
``to_dict`` gives exactly the JSON the journal and ``streamscan_summary.json`` hold.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shard: Path
    dtype: str  # safetensors dtype; a GGML type name (Q4_K, ...) in a GGUF file; MXFP4 for block/scale pairs
    shape: tuple[int, ...]  # [out, in] for matrices; the dequantized shape of a quantized weight
    start: int  # absolute byte offset in the shard
    end: int
    key: str | None = None  # the name in the file, where it differs from ``name`` (GGUF, MXFP4 *_blocks)
    quant: Quant | None = None  # how it dequantizes, with the scale tensor read beside it

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_name(self) -> str:
        return self.key or self.name

    @property
    def dequantized(self) -> bool:
        """Whether reading it yields float32 computed from a quantized form (not the stored dtype)."""
        return self.quant is not None or (self.dtype not in DTYPE_BYTES and str(self.shard).endswith(".gguf"))

    @property
    def element_size(self) -> int:
        """Bytes per element of the tensor the reader returns."""
        return 4 if self.dequantized else DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True, slots=True)
class Quant:
    """A quantized weight's scheme and the scale tensor read with it (quant.py pairs them).

    scheme: ``fp8-block`` (scale per ``block`` of [rows, cols]), ``fp8-scaled`` (per tensor or output
    channel) or ``mxfp4`` (E8M0 scale per 32 values; the TensorInfo is the ``*_blocks`` tensor)."""

    scheme: str
    scale: TensorInfo
    block: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ShardInfo:
    path: Path
    size: int
    header_sha256: str


@dataclass(frozen=True, slots=True)
class Part:
    """One expert's matrix inside a stored tensor: ``t[index, rows, cols]`` (``t[rows, cols]`` if 2-D),
    each range (start, stop, step), in the stored orientation (singular values do not care)."""

    expert: int
    projection: str  # gate | up | down
    index: int | None
    rows: tuple[int, int, int]
    cols: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return len(range(*self.rows)), len(range(*self.cols))

    @property
    def key(self) -> tuple:
        """The safetensors slice index."""
        rc = (slice(*self.rows), slice(*self.cols))
        return rc if self.index is None else (self.index, *rc)


@dataclass(frozen=True)
class ExpertRow:
    """What a scored matrix is in the MoE: kind expert | shared | router."""

    name: str
    layer: int | None
    expert: int | str  # index, 'shared', or '' for a router
    projection: str
    tensor: str
    kind: str

    def as_list(self) -> list:
        return [self.name, self.layer, self.expert, self.projection, self.tensor, self.kind]

    @classmethod
    def from_list(cls, row: list) -> ExpertRow:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class Job:
    """One matrix to score: a whole 2-D tensor, or one expert's slice (``part``) of a fused expert tensor."""

    name: str  # module name, as in the outputs (slices: `...gate_up_proj[3].gate`)
    tensor: TensorInfo
    type: str
    role: str | None = None
    part: Part | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The 2-D shape of the matrix actually scored."""
        return self.part.shape if self.part is not None else self.tensor.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes read for this job (a dequantized weight: its float32 matrix, what the reader hands over)."""
        if self.tensor.dequantized:
            return self.shape[0] * self.shape[1] * self.tensor.element_size
        if self.part is None:
            return self.tensor.nbytes
        return self.shape[0] * self.shape[1] * DTYPE_BYTES.get(self.tensor.dtype, 1)

    @property
    def cost(self) -> float:
        """Floating-point operations of the Gram method: symmetric product plus eigenvalues."""
        m, n = sorted(self.shape)
        return m * m * n + 4 / 3 * m**3


NOISE_SUM_0 = "noise-sum-0"  # no singular value at or below the threshold: the reference's Infinity
RANK_DEFICIENT = "rank-deficient"  # every value at or below it is rounding error (the reference: huge, finite)
DEGENERATE_KINDS = (NOISE_SUM_0, RANK_DEFICIENT)
JSON_INF = sys.float_info.max  # how a degenerate matrix's infinite SNR is written in strict JSON (read back as inf)


@dataclass(frozen=True)
class Result:
    """What became of one job: a score, an unscored matrix (``snr`` None with ``reason``) or an error.

    A degenerate matrix (``degenerate`` = ``NOISE_SUM_0`` or ``RANK_DEFICIENT``) is scored: ``snr`` is
    ``math.inf``, status "ok", and it ranks first in its type (team decision D2)."""

    name: str
    type: str
    shape: tuple[int, ...]
    dtype: str
    snr: float | None
    reason: str | None = None
    status: str = "ok"  # ok | null (degenerate, final) | error (retried on resume)
    role: str | None = None  # embedding | head | None
    method: str = ""
    seconds: float = 0.0  # computing (the device's busy time)
    worker: str = ""
    sigma_max: float | None = None
    threshold: float | None = None
    n_signal: int | None = None
    read_seconds: float = 0.0  # reading it (in the prefetch thread while it waited, if prefetched)
    note: str | None = None  # why it ran where it did, when that was not its first choice
    degenerate: str | None = None  # NOISE_SUM_0 | RANK_DEFICIENT (snr inf), else None

    def to_dict(self) -> dict:
        """``dataclasses.asdict(self)`` (every field is a plain value), at a tenth of its cost: the journal
        writes one per matrix. An infinite SNR is written as ``JSON_INF`` (strict JSON); ``from_json_snr``
        reads it back."""
        d = dict(self.__dict__)
        if d["snr"] == math.inf:
            d["snr"] = JSON_INF
        return d


def upgrade_legacy(fields: dict) -> None:
    """A record of a journal written before D2 (no ``degenerate`` key), brought to what a scan gives now, in
    place: all values above the threshold (``n_signal`` = min(m, n): it was scored signal/1/S[0]) is
    ``NOISE_SUM_0``; the null "no noise: rank-deficient" is ``RANK_DEFICIENT``; both SNR inf, status ok."""
    shape, n_signal = fields.get("shape"), fields.get("n_signal")
    if fields.get("status") == "ok" and n_signal is not None and len(shape or ()) == 2 and n_signal == min(shape):
        fields.update(snr=math.inf, degenerate=NOISE_SUM_0)
    elif fields.get("status") == "null" and str(fields.get("reason") or "").startswith("no noise: rank-deficient"):
        fields.update(snr=math.inf, degenerate=RANK_DEFICIENT, status="ok", reason=None)


def from_json_snr(snr: float | None, degenerate: str | None) -> float | None:
    """The SNR a strict JSON record holds, back as the Result's: ``JSON_INF`` of a degenerate matrix is inf."""
    return math.inf if degenerate is not None and snr == JSON_INF else snr


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    type: str
    reason: str


JOURNAL_FORMAT = 1  # the journal header's "streamscan_journal"
METHODS = ("gram64", "svdvals32", "svdvals64")  # compute/spectrum.py computes them
DEFAULT_METHOD = "gram64"
GROUPINGS = ("reference", "pooled", "per-layer")  # --moe-grouping (planning/experts.py)
DEFAULT_OUT = "model_snr_results"  # the reference's output directory
DEFAULT_RANK_TIMEOUT = 1800.0  # seconds rank 0 waits at the end for the slowest rank (--rank-timeout)


@dataclass(frozen=True)
class Fingerprint:
    """What must match for a resume: the checkpoint's files and headers, the method and the target options."""

    model: str
    shards: tuple[tuple[str, int, str], ...]  # (file name, size, sha256 of the header)
    method: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    revision: str | None = None  # a Hub model's commit: a resume never mixes revisions
    tower: str | None = None  # --tower: one tower of a multimodal model scanned

    def to_dict(self) -> dict:
        d: dict = {
            "model": self.model,
            "shards": [list(s) for s in self.shards],
            "method": self.method,
            "include": list(self.include),
            "exclude": list(self.exclude),
        }
        if self.revision is not None:
            d["revision"] = self.revision
        if self.tower is not None:
            d["tower"] = self.tower
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        return cls(
            str(d["model"]),
            tuple((str(a), int(b), str(c)) for a, b, c in d["shards"]),
            str(d["method"]),
            tuple(d.get("include", ())),
            tuple(d.get("exclude", ())),
            d.get("revision"),
            d.get("tower"),
        )


@dataclass(frozen=True)
class RankInfo:
    """Who wrote a rank journal (its header's "rank")."""

    rank: int
    world: int
    coordinated: bool
    host: str
    pid: int


@dataclass(frozen=True)
class ScanHeader:
    """A journal's first line: the scan's fingerprint and its plan (every target, every skip and why)."""

    version: str
    fingerprint: Fingerprint
    model: str
    slug: str
    targets: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    experts: tuple[ExpertRow, ...] = ()  # MoE models only
    consumed: tuple[tuple[str, str], ...] = ()  # quantized models only: scale tensors read with their weights
    rank: RankInfo | None = None  # rank journals only

    @property
    def method(self) -> str:
        return self.fingerprint.method

    def to_dict(self) -> dict:
        d: dict = {
            "streamscan_journal": JOURNAL_FORMAT,
            "version": self.version,
            "fingerprint": self.fingerprint.to_dict(),
            "model": self.model,
            "slug": self.slug,
            "targets": list(self.targets),
            "skipped": [list(s) for s in self.skipped],
        }
        if self.experts:
            d["experts"] = [r.as_list() for r in self.experts]
        if self.consumed:
            d["consumed"] = [list(s) for s in self.consumed]
        if self.rank is not None:
            d["rank"] = dataclasses.asdict(self.rank)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ScanHeader:
        """Raises KeyError, TypeError or ValueError when D is not a journal header."""
        rank = d.get("rank")
        return cls(
            version=str(d["version"]),
            fingerprint=Fingerprint.from_dict(d["fingerprint"]),
            model=str(d["model"]),
            slug=str(d["slug"]),
            targets=tuple(map(str, d["targets"])),
            skipped=tuple((str(n), str(r)) for n, r in d["skipped"]),
            experts=tuple(ExpertRow.from_list(r) for r in d.get("experts", ())),
            consumed=tuple((str(n), str(r)) for n, r in d.get("consumed", ())),
            rank=RankInfo(**rank) if isinstance(rank, dict) else None,
        )

    def without_rank(self) -> ScanHeader:
        return dataclasses.replace(self, rank=None)


class _Omitted:
    """A summary field a run does not report (absent from the JSON, unlike None)."""

    def __repr__(self) -> str:
        return "OMITTED"

    def __bool__(self) -> bool:
        return False


OMITTED: Any = _Omitted()


@dataclass(frozen=True)
class ScanSummary:
    """``streamscan_summary.json``: counts, timings, and every skipped tensor with its reason.

    Fields left OMITTED are absent from the JSON: ``ranks`` is a merge's, ``rank``/``world_size``/``devices``
    a rank's own share, ``run`` a scan's (None when nothing ran), ``hub`` a Hub scan's, ``moe`` an MoE model's.
    """

    model: str
    method: str
    streamscan: str
    matrices: int
    scored: int
    no_snr: int
    failed: int
    resumed_from_journal: int
    skipped: int
    seconds: float
    compute_seconds: float
    cpu_workers: int | None
    peak_rss_mb: float
    failures: dict[str, str | None]
    skipped_tensors: dict[str, str]
    consumed_tensors: dict[str, str]
    ranks: int = OMITTED
    rank: int = OMITTED
    world_size: int = OMITTED
    devices: list[str] = OMITTED
    run: dict | None = OMITTED
    placement_notes: dict[str, str] = OMITTED
    hub: dict = OMITTED
    moe: dict = OMITTED
    # D1/D2: what the results JSON leaves out (name -> why it has no SNR) and the degenerate matrices it ranks
    # first (name -> NOISE_SUM_0 | RANK_DEFICIENT); a scan's summary always has both
    unscored_tensors: dict[str, str] = OMITTED
    degenerate_tensors: dict[str, str] = OMITTED

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not OMITTED}

    def replace(self, **changes) -> ScanSummary:
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: str):  # the summary was a dict before ScanSummary: ``res.summary["scored"]`` still works
        value = getattr(self, key, OMITTED) if key in self.__dataclass_fields__ else OMITTED
        if value is OMITTED:
            raise KeyError(key)
        return value

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key, OMITTED) is not OMITTED


@dataclass(frozen=True)
class HubNetwork:
    """How requests to the Hub wait and retry: ``timeout`` seconds without a byte before a request fails; a
    transient failure (HTTP 408, 429, 5xx, a timeout, a dropped connection) is retried ``retries`` times,
    waiting ``backoff`` seconds, then twice as long each time up to ``max_wait`` (huggingface_hub's
    defaults); ``workers`` shard headers are read at once."""

    timeout: float = 10.0
    retries: int = 5
    backoff: float = 1.0
    max_wait: float = 8.0
    workers: int = 8


@dataclass(frozen=True)
class ScanOptions:
    """Everything that shapes a scan besides MODEL and OUT (``streamscan.scan``'s keywords, ``run``'s options).

    ``devices``: "auto" (every visible GPU, else the CPU), "cpu", or GPU indices mixed with "cpu" ("0,1,cpu").
    ``max_memory``: RAM for tensors read ahead and CPU work, bytes or "24G" (default: available minus headroom).
    ``shard`` ("i/N") and ``distributed`` split a scan (see ``streamscan.scan``); ``revision``, ``offline``,
    ``max_disk``, ``keep_shards`` and ``network`` (a HubNetwork: timeouts and retries) are for Hub models;
    ``moe_grouping`` ranks MoE experts for the YAML.
    ``commit_records``/``commit_seconds``: the journal commits (writes and fsyncs) a batch of records once it
    holds that many or its oldest waited that long; a kill loses at most that batch (1: a fsync per record).
    """

    method: str = DEFAULT_METHOD
    devices: str = "auto"
    cpu_workers: int | None = None
    max_memory: int | str | None = None
    top_percent: tuple[float, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fresh: bool = False
    name: str | None = None
    shard: str | None = None
    distributed: bool | None = None
    rank_timeout: float = DEFAULT_RANK_TIMEOUT
    revision: str | None = None
    offline: bool | None = None
    max_disk: int | str | None = None
    keep_shards: bool = False
    network: HubNetwork = HubNetwork()
    moe_grouping: str = "reference"
    tower: str | None = None  # scan one tower of a multimodal model only: language | vision | audio (layout.tower)
    spectra: bool = True  # keep every matrix's singular values in OUT/spectra (results/spectra.py)
    commit_records: int = 256
    commit_seconds: float = 0.5
    # scheduler settings (compute/scheduler.run_jobs); the CLI reads them from STREAMSCAN_* variables
    solver: str | None = None  # force a gram64 solver path on every device (compute/solver.PATHS)
    pieces_above: int | None = None  # bytes as stored above which a matrix is read in pieces (default: 1 GiB)
    threads_per_job: int | None = None  # torch threads per CPU job (default: 1; placement.cpu_threads)

    def __post_init__(self) -> None:
        for name in ("top_percent", "include", "exclude"):  # lists and generators from callers become tuples
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def of(cls, **options) -> ScanOptions:
        """From keyword arguments, naming an unknown one in the TypeError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown scan option(s): {', '.join(unknown)}")
        return cls(**options)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
