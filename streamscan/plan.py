"""plan: which tensors are scored, which are skipped and why, minus what is already done."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .index import DTYPE_BYTES, CheckpointIndex, TensorInfo
from .layout import embedding_role, module_name, natural_key, type_key
from .quant import pair_quantized
from .moe import MoeConfig, Part, split_experts

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
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
    consumed: tuple[Skipped, ...] = ()  # scale tensors read with their quantized weight (reason: what they scale)

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.done)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _option_reason(names: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...]) -> str | None:
    if include and not any(_matches(n, include) for n in names):
        return "not matched by --include"
    if exclude and any(_matches(n, exclude) for n in names):
        return "matched by --exclude"
    return None


def classify(t: TensorInfo) -> str | None:
    """None if the tensor is a target, else why it is skipped."""
    if len(t.shape) != 2:
        what = {0: "scalar", 1: "1-D tensor (norm or bias)"}.get(len(t.shape), f"{len(t.shape)}-D tensor")
        return f"{what}: no matrix spectrum"
    if not t.name.endswith(".weight"):
        return "2-D tensor not named *.weight"
    if t.dtype not in FLOAT_DTYPES and not t.dequantized:
        return f"dtype {t.dtype} is not a float weight"
    return None


def make_plan(
    index: CheckpointIndex,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    done: frozenset[str] = frozenset(),
) -> Plan:
    targets, skipped = [], []
    moe = MoeConfig.from_config(index.source.config)
    tensors, quant_skips, consumed = pair_quantized(index.tensors, index.source.config)
    for t in sorted(tensors, key=lambda t: natural_key(t.name)):
        name = module_name(t.name)
        quant_reason = quant_skips.get(t.name)  # a quantized weight that cannot be dequantized
        floating = t.dtype in FLOAT_DTYPES or t.dequantized
        split = split_experts(t.name, t.shape, moe) if floating and not quant_reason else None
        if isinstance(split, str):  # a fused expert tensor that config.json does not let us split safely
            skipped.append(Skipped(name, type_key(name), split))
            continue
        for label, part in split or [(name, None)]:
            reason = (quant_reason or classify(t)) if part is None else None
            reason = reason or _option_reason((label, name, t.name), include, exclude)
            if reason is None:
                role = embedding_role(t.name, t.shape, index.source.config) if part is None else None
                targets.append(Job(label, t, type_key(label), role, part))
            else:
                skipped.append(Skipped(label, type_key(label), reason))
    jobs = sorted((j for j in targets if j.name not in done), key=lambda j: -j.cost)
    used = tuple(Skipped(n, type_key(n), why) for n, why in sorted(consumed.items(), key=lambda kv: natural_key(kv[0])))
    return Plan(tuple(jobs), tuple(skipped), frozenset(j.name for j in targets if j.name in done), used)
