"""apply: freeze a model but its selected parameters, say what trains, keep an optimizer in step."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from streamscan.errors import SelectionError
from streamscan.layout import type_key
from streamscan.training.match import Names, missing_error, rename_rule, selection_rules

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- summary


def param_type(name: str) -> str:
    """The reference's type key of the module a parameter belongs to (`….mlp.down_proj.bias` -> `mlp.down_proj`)."""
    head, _, leaf = name.rpartition(".")
    return type_key(head if head and leaf in ("weight", "bias") else name)


@dataclass(frozen=True)
class TrainableSummary:
    """Which parameters train. Counts are of unique tensors: a tied embedding/head counts once."""

    trainable: int  # parameters (elements)
    total: int
    by_type: dict[str, tuple[int, int]]  # type -> (trainable, total) elements
    trainable_names: tuple[str, ...]
    matched: dict[str, tuple[str, ...]] = field(default_factory=dict)  # selection entry -> parameters
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fused parameter -> entries unfreezing it
    unmatched: tuple[str, ...] = ()  # only with strict=False

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.share:.1f}%) "
            f"in {len(self.trainable_names)} tensors"
        )

    def table(self) -> str:
        """Per type: trainable / total parameters, one line each."""
        return "\n".join(
            f"{t:40s} {a:>14,} / {b:<14,} ({100 * a / b if b else 0:.0f}%)" for t, (a, b) in self.by_type.items()
        )


def trainable_summary(model: torch.nn.Module) -> TrainableSummary:
    """What trains now, by requires_grad."""
    by_type: dict[str, list[int]] = {}
    names = []
    for name, p in model.named_parameters():
        counts = by_type.setdefault(param_type(name), [0, 0])
        counts[1] += p.numel()
        if p.requires_grad:
            counts[0] += p.numel()
            names.append(name)
    return TrainableSummary(
        sum(a for a, _ in by_type.values()),
        sum(b for _, b in by_type.values()),
        {t: (a, b) for t, (a, b) in by_type.items()},
        tuple(names),
    )


def apply_selection(
    model: torch.nn.Module,
    selection,
    top_percent: float | None = None,
    *,
    replace_prefix: tuple[str, str] | None = None,
    strict: bool = True,
) -> TrainableSummary:
    """Freeze every parameter of MODEL, then unfreeze exactly those SELECTION names.

    SELECTION is a scan directory (``streamscan run --out``; its top ``top_percent``% per type, default 25,
    plus the embedding and output head), an ``unfrozen_parameters`` YAML, a :class:`Selection`, or a list of
    names/patterns. ``replace_prefix=(old, new)`` renames selection entries starting with ``old`` (e.g. a scan
    of ``model.…`` applied to a wrapper whose modules are ``language_model.model.…``).
    Raises SelectionError, listing the closest names, when an entry matches nothing (``strict=False``: logged
    and reported in ``unmatched`` instead).
    """
    rules = selection_rules(selection, top_percent)
    if replace_prefix is not None:
        rules = [rename_rule(r, *replace_prefix) for r in rules]
    names = Names(model)
    matched: dict[str, tuple[str, ...]] = {}
    fused: dict[str, list[str]] = {}
    missing = []
    for rule in rules:
        hit, is_fused = names.resolve(rule)
        if not hit:
            missing.append(rule.line)
            continue
        matched[rule.line] = tuple(hit)
        for n in hit if is_fused else ():
            fused.setdefault(names.canonical[id(names.params[n])], []).append(rule.line)
    if missing:
        err = missing_error(missing, len(rules), names)
        if strict:
            raise err
        log.warning("%s", err)
    chosen = {id(names.params[n]) for hit in matched.values() for n in hit}
    for name, p in model.named_parameters():
        if id(p) in chosen and not (p.is_floating_point() or p.is_complex()):
            raise SelectionError(
                f"{name} is stored as {p.dtype} (quantized?) and cannot be trained directly; "
                "dequantize the model or train an adapter on it"
            )
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) not in chosen:
            p.grad = None
    summary = dataclasses.replace(
        trainable_summary(model),
        matched=matched,
        unmatched=tuple(missing),
        fused={k: tuple(v) for k, v in fused.items()},
    )
    log.info("selection applied: %s", summary)
    return summary


def sync_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> tuple[int, int]:
    """Make OPTIMIZER follow requires_grad: add newly trainable parameters (a matrix to the group with the
    most weight decay, a vector to the one with the least), drop the state (Adam moments) of frozen ones.
    Returns (parameters added, states dropped)."""
    groups = optimizer.param_groups
    present = {id(p) for g in groups for p in g["params"]}
    added = dropped = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in present:
            pick = max if p.ndim >= 2 else min
            pick(groups, key=lambda g: g.get("weight_decay", 0.0))["params"].append(p)
            present.add(id(p))
            added += 1
        elif not p.requires_grad:
            p.grad = None
            if p in optimizer.state:
                del optimizer.state[p]
                dropped += 1
    return added, dropped
