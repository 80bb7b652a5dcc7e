"""plan: which tensors are scored, which are skipped and why, minus what is already done."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass

from streamscan.checkpoint.index import CheckpointIndex
from streamscan.layout import embedding_role, module_name, natural_key, tower, type_key
from streamscan.planning.experts import MoeConfig, split_experts, zero_expert_reason
from streamscan.planning.quant import pair_quantized
from streamscan.records import Job, Skipped, TensorInfo

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]  # largest first
    skipped: tuple[Skipped, ...]
    done: frozenset[str]
    consumed: tuple[Skipped, ...] = ()  # scale tensors read with their quantized weight (reason: what they scale)

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.done)

    def without(self, done: frozenset[str]) -> Plan:
        """This plan less the jobs named in DONE (what a resume still has to do): ``make_plan(…, done)``
        without planning the checkpoint again."""
        if not done:
            return self
        jobs = tuple(j for j in self.jobs if j.name not in done)
        return Plan(jobs, self.skipped, self.done | {j.name for j in self.jobs if j.name in done}, self.consumed)


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
    # x.weight, and Gemma-3's mm_input_projection_weight or an attention pooling head's in_proj_weight
    if not t.name.rsplit(".", 1)[-1].endswith("weight"):
        return "2-D tensor not named *.weight or *_weight: not a weight matrix"
    if t.dtype not in FLOAT_DTYPES and not t.dequantized:
        return f"dtype {t.dtype} is not a float weight"
    return None


def _type(name: str) -> str:
    """type_key, one string per type (a type repeats in every layer: 45k expert matrices have 768 types)."""
    return sys.intern(type_key(name))


def make_plan(
    index: CheckpointIndex,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    done: frozenset[str] = frozenset(),
    towers: str | None = None,
) -> Plan:
    """Every target of INDEX (``include``/``exclude`` globs; ``towers``: one tower of a multimodal model only,
    ``layout.tower``), minus the names in DONE."""
    targets, skipped = [], []
    moe = MoeConfig.from_config(index.source.config)
    tensors, quant_skips, consumed = pair_quantized(index.tensors, index.source.config)
    for t in sorted(tensors, key=lambda t: natural_key(t.name)):
        name = module_name(t.name)
        quant_reason = quant_skips.get(t.name)  # a quantized weight that cannot be dequantized
        floating = t.dtype in FLOAT_DTYPES or t.dequantized
        split = split_experts(t.name, t.shape, moe) if floating and not quant_reason else None
        if isinstance(split, str):  # a fused expert tensor that config.json does not let us split safely
            skipped.append(Skipped(name, _type(name), split))
            continue
        for label, part in split or [(name, None)]:
            if isinstance(part, str):  # a slot the model never uses (LongCat-Flash's zero experts)
                skipped.append(Skipped(label, _type(label), part))
                continue
            reason = (quant_reason or classify(t) or zero_expert_reason(name, moe)) if part is None else None
            reason = reason or _option_reason((label, name, t.name), include, exclude)
            if reason is None and towers is not None and (where := tower(label)) != towers:
                reason = f"{where} tower: not scanned (--tower {towers})"
            if reason is None:
                role = embedding_role(t.name, t.shape, index.source.config) if part is None else None
                targets.append(Job(label, t, _type(label), role, part))
            else:
                skipped.append(Skipped(label, _type(label), reason))
    jobs = sorted((j for j in targets if j.name not in done), key=lambda j: -j.cost)
    used = tuple(Skipped(n, _type(n), why) for n, why in sorted(consumed.items(), key=lambda kv: natural_key(kv[0])))
    return Plan(tuple(jobs), tuple(skipped), frozenset(j.name for j in targets if j.name in done), used)
