"""apply: freeze a model but its selected parameters, say what trains, keep an optimizer in step."""

from __future__ import annotations

import dataclasses
import logging
import math
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
    """What trains now: by requires_grad, and of a parameter that trains in part, its trained slices."""
    by_type: dict[str, list[int]] = {}
    names = []
    for name, p in model.named_parameters():
        counts = by_type.setdefault(param_type(name), [0, 0])
        counts[1] += p.numel()
        if p.requires_grad:
            counts[0] += trained_elements(p)
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
    names: str = "auto",
) -> TrainableSummary:
    """Freeze every parameter of MODEL, then unfreeze exactly those SELECTION names.

    SELECTION is a scan directory (``streamscan run --out``; its top ``top_percent``% per type, default 25,
    plus the embedding and output head), an ``unfrozen_parameters`` YAML, a :class:`Selection`, or a list of
    names/patterns. ``replace_prefix=(old, new)`` renames selection entries starting with ``old`` (e.g. a scan
    of ``model.…`` applied to a wrapper whose modules are ``language_model.model.…``).
    Raises SelectionError, listing the closest names, when an entry matches nothing (``strict=False``: logged
    and reported in ``unmatched`` instead).

    A scan directory, results JSON or Selection is matched in the names transformers gives MODEL's
    parameters (NAMES ``auto``/``transformers``; ``checkpoint``: the names as stored): a selected expert of
    a fused parameter trains alone, and only its gate or up rows when only one was selected. A YAML's
    Axolotl ranges (``^p$[3:4]``) train those dim-0 rows. Parameters that train in part get gradient masks;
    pass the optimizer to :func:`mask_optimizer` (the callback does) to keep weight decay off the rest.
    """
    rules = selection_rules(selection, top_percent, model, names)
    if replace_prefix is not None:
        rules = [rename_rule(r, *replace_prefix) for r in rules]
    params = Names(model)
    matched: dict[str, tuple[str, ...]] = {}
    fused: dict[str, list[str]] = {}
    whole: set[int] = set()  # parameters a line unfreezes whole
    parts: dict[int, dict[tuple, tuple[slice, ...]]] = {}  # parameter -> the slices that train (Axolotl: ranges win)
    missing = []
    for rule in rules:
        hit, is_fused = params.resolve(rule)
        if not hit:
            missing.append(rule.line)
            continue
        matched[rule.line] = tuple(hit)
        for n in hit if is_fused else ():
            fused.setdefault(params.canonical[id(params.params[n])], []).append(rule.line)
        for n in hit:
            p = params.params[n]
            for key in _slices(rule, n, tuple(p.shape)):
                if key is None:
                    whole.add(id(p))
                else:
                    parts.setdefault(id(p), {})[tuple((s.start, s.stop, s.step) for s in key)] = key
    if missing:
        err = missing_error(missing, len(rules), params)
        if strict:
            raise err
        log.warning("%s", err)
    chosen = whole | set(parts)
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
        _mask(p, list(parts[id(p)].values()) if id(p) in parts else None)
    summary = dataclasses.replace(
        trainable_summary(model),
        matched=matched,
        unmatched=tuple(missing),
        fused={k: tuple(v) for k, v in fused.items()},
    )
    log.info("selection applied: %s", summary)
    return summary


def _slices(rule, name: str, shape: tuple[int, ...]) -> list[tuple[slice, ...] | None]:
    """What RULE trains of parameter NAME: None (all of it) or slices."""
    if rule.regions:
        out = []
        for r in rule.regions:
            if r.param == name:
                out.append(None if r.whole(shape) else r.slices())
        return out
    if rule.exact:
        return [tuple(slice(*s) for s in key) for key in rule.exact]
    if rule.rows is not None and shape:
        start, end = rule.rows
        end = shape[0] if end is None else end
        if start >= shape[0] or end > shape[0]:
            raise SelectionError(
                f"selection line {rule.line!r}: rows [{start}:{end}] are outside {name} ({shape[0]} rows); "
                "regenerate the YAML for this model"
            )
        return [(slice(start, end, 1),)]
    return [None]


# A parameter that trains in part carries (its slices, the gradient hook's handle) in this attribute. The
# gradient outside the slices is zeroed; ``mask_optimizer`` keeps weight decay off it: those elements never change.
_PARTS = "_streamscan_trained_slices"


def _mask(p: torch.nn.Parameter, slices: list[tuple[slice, ...]] | None) -> None:
    old = getattr(p, _PARTS, None)
    if old is not None:
        old[1].remove()
        delattr(p, _PARTS)
    if slices is None:
        return

    def keep(grad: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(grad)
        for key in slices:
            out[key] = grad[key]
        return out

    setattr(p, _PARTS, (slices, p.register_hook(keep)))


def trained_slices(p: torch.nn.Parameter) -> list[tuple[slice, ...]] | None:
    """The slices of P that train (``apply_selection``), or None when all of it does (or none)."""
    entry = getattr(p, _PARTS, None)
    return None if entry is None else entry[0]


def trained_elements(p: torch.nn.Parameter) -> int:
    """How many elements of P train (its slices are disjoint: distinct matrices of the checkpoint)."""
    if not p.requires_grad:
        return 0
    slices = trained_slices(p)
    if slices is None:
        return p.numel()
    total = 0
    for key in slices:
        total += math.prod(len(range(*s.indices(n))) for s, n in zip(key, p.shape)) * math.prod(p.shape[len(key) :])
    return total


def mask_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Keep OPTIMIZER's steps off the frozen slices of parameters that train in part (gradients there are
    zeroed already; weight decay would still shrink them). AdamW: around each step, a group holding such a
    parameter runs with weight decay 0 while the hooks apply AdamW's own ``p.mul_(1 - lr * weight_decay)``
    to its other parameters and to the trained slices only, so the frozen slices stay bit-identical and
    their Adam moments zero. Any other optimizer: the frozen slices are copied before a step and put back
    after it. The parameter groups are left as they are (a learning-rate scheduler keeps working).
    Returns whether hooks were added (once per optimizer; a wrapper such as accelerate's is looked through)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if getattr(optimizer, "_streamscan_masked", False):
        return False
    if isinstance(optimizer, torch.optim.AdamW):
        optimizer.register_step_pre_hook(_decoupled_decay)
        optimizer.register_step_post_hook(_restore_decay)
    else:
        optimizer.register_step_pre_hook(_save_frozen)
        optimizer.register_step_post_hook(_restore_frozen)
    optimizer._streamscan_masked = True  # type: ignore[attr-defined]
    return True


def _partial(group: dict) -> bool:
    return any(trained_slices(p) is not None and p.grad is not None for p in group["params"])


@torch.no_grad()
def _decoupled_decay(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        decay = group.get("weight_decay", 0.0)
        if not decay or not _partial(group):
            continue
        factor = 1 - float(group["lr"]) * decay
        for p in group["params"]:
            if p.grad is None:
                continue
            slices = trained_slices(p)
            for key in [...] if slices is None else slices:
                p[key].mul_(factor)
        group["streamscan_weight_decay"], group["weight_decay"] = decay, 0.0


def _restore_decay(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        if "streamscan_weight_decay" in group:
            group["weight_decay"] = group.pop("streamscan_weight_decay")


@torch.no_grad()
def _save_frozen(optimizer, args, kwargs) -> None:
    saved = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            slices = trained_slices(p)
            if slices is not None and p.grad is not None:
                saved.append((p, p.detach().clone(), slices))
    optimizer._streamscan_saved = saved  # type: ignore[attr-defined]


@torch.no_grad()
def _restore_frozen(optimizer, args, kwargs) -> None:
    for p, old, slices in getattr(optimizer, "_streamscan_saved", ()):
        for key in slices:
            old[key] = p[key]
        p.copy_(old)
    optimizer._streamscan_saved = []  # type: ignore[attr-defined]


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
    mask_optimizer(optimizer)
    return added, dropped
