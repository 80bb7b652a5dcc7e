"""plan: which tensors are scored, which are skipped and why, minus what is already done."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .index import CheckpointIndex, TensorInfo
from .layout import embedding_role, module_name, natural_key, type_key

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class Job:
    """One matrix to score."""

    name: str  # module name, as in the outputs
    tensor: TensorInfo
    type: str
    role: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.tensor.shape  # type: ignore[return-value]

    @property
    def cost(self) -> float:
        """Floating-point operations of the Gram method: symmetric product plus eigenvalues."""
        m, n = sorted(self.shape)
        return m * m * n + 4 / 3 * m**3


@dataclass(frozen=True)
class Result:
    """What became of one job: a score, a degenerate matrix (``snr`` None with ``reason``) or an error."""

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


@dataclass(frozen=True)
class Skipped:
    name: str
    type: str
    reason: str


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]  # largest first
    skipped: tuple[Skipped, ...]
    done: frozenset[str]

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.done)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def classify(t: TensorInfo) -> str | None:
    """None if the tensor is a target, else why it is skipped."""
    if len(t.shape) != 2:
        what = {0: "scalar", 1: "1-D tensor (norm or bias)"}.get(len(t.shape), f"{len(t.shape)}-D tensor")
        return f"{what}: no matrix spectrum"
    if not t.name.endswith(".weight"):
        return "2-D tensor not named *.weight"
    if t.dtype not in FLOAT_DTYPES:
        return f"dtype {t.dtype} is not a float weight"
    return None


def make_plan(
    index: CheckpointIndex,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    done: frozenset[str] = frozenset(),
) -> Plan:
    targets, skipped = [], []
    for t in sorted(index.tensors, key=lambda t: natural_key(t.name)):
        name = module_name(t.name)
        reason = classify(t)
        if reason is None and include and not (_matches(name, include) or _matches(t.name, include)):
            reason = "not matched by --include"
        if reason is None and exclude and (_matches(name, exclude) or _matches(t.name, exclude)):
            reason = "matched by --exclude"
        if reason is None:
            targets.append(Job(name, t, type_key(name), embedding_role(t.name, t.shape, index.source.config)))
        else:
            skipped.append(Skipped(module_name(t.name), type_key(name), reason))
    jobs = sorted((j for j in targets if j.name not in done), key=lambda j: -j.cost)
    return Plan(tuple(jobs), tuple(skipped), frozenset(j.name for j in targets if j.name in done))
