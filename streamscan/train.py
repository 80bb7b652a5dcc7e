"""train: apply a Spectrum selection to a model, SNR-guided learning rates, rescans during training.

Works on any ``torch.nn.Module``; transformers is imported only for :class:`SpectrumCallback`.

Matching a selection to parameter names
- A plain dotted name (optionally ``^…$``-anchored or ending in ``.``, as the YAML writer emits them)
  names exactly one parameter or one module, whose parameters are all unfrozen. Unlike Axolotl's prefix
  ``re.match``, ``model.layers.1`` never catches ``model.layers.11`` and ``mlp.gate`` never ``mlp.gate_proj``.
- Any other line is a regular expression applied as Axolotl's ``utils/freeze.py`` applies it: dots are
  literal unless followed by ``+``, and it is matched with ``re.match`` (anchored at the start only).
- A name inside a fused expert parameter (``…experts.gate_up_proj.3``, ``…experts.3.gate_proj`` for a
  3-D ``…experts.gate_up_proj``) unfreezes that parameter whole: a slice cannot be trained alone.
- Tied parameters (``lm_head.weight`` is ``model.embed_tokens.weight``) answer to either name and are
  counted once. A selection entry that matches nothing is an error (unless ``strict=False``).
"""
from __future__ import annotations

import bisect
import dataclasses
import difflib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SelectionError, UsageError
from .index import CheckpointIndex, TensorInfo
from .layout import natural_key, type_key
from .plan import Result, make_plan
from .scan import load_results
from .select import Selection, rank_by_type, select_top
from .source import ModelSource
from .spectrum import DEFAULT_METHOD, METHODS, SNR, score

log = logging.getLogger(__name__)

DEFAULT_TOP_PERCENT = 25.0
_PLAIN = re.compile(r"^\^?([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\.?\$?$")
_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")  # Axolotl's "[start:end]" row-range suffix
_SLICE = re.compile(r"^[A-Za-z0-9_.]+\[\d+\](\.[A-Za-z0-9_]+)?$")  # an expert slice: `….experts.gate_up_proj[3].gate`
# Leaf names of one projection in unfused layouts -> the word naming it inside a fused parameter's leaf.
_FUSED_WORDS = {"gate_proj": "gate", "w1": "gate", "linear": "gate", "up_proj": "up", "w3": "up", "v1": "up",
                "linear_v": "up", "down_proj": "down", "w2": "down", "linear_1": "down"}
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


# ----------------------------------------------------------------------------------------------- names

@dataclass(frozen=True)
class _Rule:
    line: str  # as given (after replace_prefix)
    name: str | None  # a plain dotted name, matched exactly
    regex: re.Pattern | None  # any other line, matched as Axolotl does


def _rule(line: str) -> _Rule:
    line = line.strip()
    plain = _PLAIN.match(line)
    if plain:
        return _Rule(line, plain.group(1), None)
    if _SLICE.match(line) and not line.split("[", 1)[0].endswith((".weight", ".bias")):
        return _Rule(line, line, None)  # a scan's slice name; `x.weight[5]` stays Axolotl's row range
    if _RANGE.match(line):
        raise SelectionError(f"selection line {line!r}: Axolotl's [start:end] row ranges are not supported by "
                             "apply_selection; unfreeze the whole parameter (drop the range) or train with Axolotl")
    try:
        return _Rule(line, None, re.compile(re.sub(r"\.(?!\+)", r"\\.", line)))
    except re.error as err:
        raise SelectionError(f"selection line {line!r} is not a valid regular expression ({err}); fix the YAML") from None


class _Names:
    """Every parameter name of a model (tied aliases included) and its module names."""

    def __init__(self, model: torch.nn.Module):
        self.params: dict[str, torch.nn.Parameter] = dict(model.named_parameters(remove_duplicate=False))
        self.sorted = sorted(self.params)
        self.canonical: dict[int, str] = {}
        for name, p in model.named_parameters():
            self.canonical[id(p)] = name
        self.modules = {n for n, _ in model.named_modules(remove_duplicate=False) if n}

    def under(self, prefix: str) -> list[str]:
        """Parameter names that start with PREFIX (sorted-list range, not a scan)."""
        i = bisect.bisect_left(self.sorted, prefix)
        out = []
        while i < len(self.sorted) and self.sorted[i].startswith(prefix):
            out.append(self.sorted[i])
            i += 1
        return out

    def exact(self, name: str) -> list[str]:
        """The parameter NAME, or every parameter of the module NAME."""
        if name in self.params:
            return [name]
        return self.under(name + ".")

    def fused(self, name: str) -> list[str]:
        """The fused parameter a slice name points into, or []."""
        for i, ch in enumerate(name):  # `…experts.gate_up_proj.3`, `…gate_up_proj[3]`
            if ch in ".[:" and name[:i] in self.params:
                return [name[:i]]
        parts = name.split(".")
        for i in range(1, len(parts)):  # `…experts.3.gate_proj` -> `…experts.gate_up_proj`
            if parts[i].isdigit() and "expert" in parts[i - 1]:
                reduced = parts[:i] + parts[i + 1:]
                hit = self.exact(".".join(reduced))
                if hit:
                    return hit
                module, leaf = ".".join(reduced[:-1]), reduced[-1]
                word = _FUSED_WORDS.get(leaf, leaf.removesuffix("_proj"))
                found = [n for n in self.under(module + ".")
                         if "." not in n[len(module) + 1:] and word in n[len(module) + 1:].split("_")]
                if len(found) == 1:
                    return found
        return []

    def resolve(self, rule: _Rule) -> tuple[list[str], bool]:
        """(parameter names the rule unfreezes, whether they are fused parameters unfrozen whole)."""
        if rule.regex is not None:
            return [n for n in self.sorted if rule.regex.match(n)], False
        hit = self.exact(rule.name)
        if hit:
            return hit, False
        return self.fused(rule.name), True

    def all_names(self) -> list[str]:
        return sorted(self.modules | set(self.params))


def _prefix_hint(missing: Sequence[str], names: list[str]) -> str:
    """Where the selection's names are the model's under another prefix, the replace_prefix that fixes it."""
    by_suffix: dict[str, str] = {}
    for n in names:
        parts = n.split(".")
        for k in range(len(parts)):
            by_suffix.setdefault(".".join(parts[k:]), n)
    votes: dict[tuple[str, str], int] = {}
    for name in missing[:50]:
        parts = name.split(".")
        for k in range(len(parts)):
            suffix = ".".join(parts[k:])
            if suffix in by_suffix and len(parts) - k >= 2:
                found = by_suffix[suffix]
                pair = (name[: len(name) - len(suffix)], found[: len(found) - len(suffix)])
                votes[pair] = votes.get(pair, 0) + 1
                break
    if not votes:
        return ""
    (old, new), _ = max(votes.items(), key=lambda kv: kv[1])
    if not old:
        where = f"the model's names have {new!r} in front of the selection's"
    elif not new:
        where = f"the selection's names start with {old!r}, the model's do not"
    else:
        where = f"the selection's names start with {old!r} where the model's start with {new!r}"
    return f"; {where}: pass replace_prefix=({old!r}, {new!r})"


def _missing_error(missing: list[str], total: int, names: _Names) -> SelectionError:
    first = missing[0]
    bare = _PLAIN.match(first)
    close = difflib.get_close_matches(bare.group(1) if bare else first, names.all_names(), n=3, cutoff=0.5)
    closest = f" (closest in the model: {', '.join(close)})" if close else " (nothing in the model is close)"
    plain = [m.group(1) for m in map(_PLAIN.match, missing) if m]
    return SelectionError(
        f"{len(missing)} of {total} selection entries match no parameter of the model, e.g. {first!r}{closest}"
        f"{_prefix_hint(plain, names.all_names())}; check that the scan was of this model"
    )


# ------------------------------------------------------------------------------------------- selection

def _selection_rules(selection, top_percent: float | None) -> list[_Rule]:
    """The entries of SELECTION: a scan directory, a YAML file, a Selection, or names/patterns."""
    if isinstance(selection, Selection):
        return [_Rule(n, n, None) for n in (*selection.always, *selection.names())]  # names, never patterns
    if isinstance(selection, (str, Path)):
        path = Path(selection).expanduser()
        if path.is_dir():
            header, results = load_results(path)
            if len(results) < len(header["targets"]):
                log.warning("%s: partial scan (%d of %d matrices); selecting among those scored",
                            path, len(results), len(header["targets"]))
            return _selection_rules(select_top(results, top_percent or DEFAULT_TOP_PERCENT), None)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            if top_percent is not None:
                raise UsageError(f"{path}: a YAML selection already fixes its percentage; pass the scan "
                                 "directory instead to choose top_percent")
            return [_rule(x) for x in _yaml_lines(path)]
        raise SelectionError(f"{selection}: neither a streamscan scan directory nor a .yaml selection; "
                             "give the --out directory of `streamscan run` or an unfrozen-parameters YAML")
    lines = list(selection)
    if not all(isinstance(x, str) for x in lines):
        raise UsageError("selection: give a scan directory, a YAML path, a Selection or a list of names")
    return [_rule(x) for x in lines]


def _rename(rule: _Rule, old: str, new: str) -> _Rule:
    if rule.name is not None:
        return _Rule(new + rule.name[len(old):], new + rule.name[len(old):], None) if rule.name.startswith(old) else rule
    anchor = "^" if rule.line.startswith("^") else ""
    body = rule.line[len(anchor):]
    return _rule(anchor + new + body[len(old):]) if body.startswith(old) else rule


def _yaml_lines(path: Path) -> list[str]:
    try:
        import yaml
    except ImportError:
        raise UsageError("reading a YAML selection needs PyYAML: pip install 'streamscan[train]'") from None
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SelectionError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix or regenerate it") from None
    lines = doc.get("unfrozen_parameters") if isinstance(doc, dict) else doc
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise SelectionError(f"{path}: no `unfrozen_parameters:` list of strings; regenerate it with `streamscan select`")
    return lines


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
        return (f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.share:.1f}%) "
                f"in {len(self.trainable_names)} tensors")

    def table(self) -> str:
        """Per type: trainable / total parameters, one line each."""
        return "\n".join(f"{t:40s} {a:>14,} / {b:<14,} ({100 * a / b if b else 0:.0f}%)" for t, (a, b) in self.by_type.items())


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
    return TrainableSummary(sum(a for a, _ in by_type.values()), sum(b for _, b in by_type.values()),
                            {t: (a, b) for t, (a, b) in by_type.items()}, tuple(names))


def apply_selection(model: torch.nn.Module, selection, top_percent: float | None = None, *,
                    replace_prefix: tuple[str, str] | None = None, strict: bool = True) -> TrainableSummary:
    """Freeze every parameter of MODEL, then unfreeze exactly those SELECTION names.

    SELECTION is a scan directory (``streamscan run --out``; its top ``top_percent``% per type, default 25,
    plus the embedding and output head), an ``unfrozen_parameters`` YAML, a :class:`Selection`, or a list of
    names/patterns. ``replace_prefix=(old, new)`` renames selection entries starting with ``old`` (e.g. a scan
    of ``model.…`` applied to a wrapper whose modules are ``language_model.model.…``).
    Raises SelectionError, listing the closest names, when an entry matches nothing (``strict=False``: logged
    and reported in ``unmatched`` instead).
    """
    rules = _selection_rules(selection, top_percent)
    if replace_prefix is not None:
        rules = [_rename(r, *replace_prefix) for r in rules]
    names = _Names(model)
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
        err = _missing_error(missing, len(rules), names)
        if strict:
            raise err
        log.warning("%s", err)
    chosen = {id(names.params[n]) for hit in matched.values() for n in hit}
    for name, p in model.named_parameters():
        if id(p) in chosen and not (p.is_floating_point() or p.is_complex()):
            raise SelectionError(f"{name} is stored as {p.dtype} (quantized?) and cannot be trained directly; "
                                 "dequantize the model or train an adapter on it")
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) not in chosen:
            p.grad = None
    summary = dataclasses.replace(trainable_summary(model), matched=matched, unmatched=tuple(missing),
                                  fused={k: tuple(v) for k, v in fused.items()})
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


# ------------------------------------------------------------------------------------ in-memory scans

def _memory_index(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], config: dict | None) -> CheckpointIndex:
    if config is None:
        cfg = getattr(model, "config", None)
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    source = ModelSource(type(model).__name__, Path("."), (), None, config)
    tensors = tuple(TensorInfo(n, Path("<memory>"), _DTYPES.get(p.dtype, str(p.dtype).removeprefix("torch.")),
                               tuple(p.shape), 0, p.numel() * p.element_size()) for n, p in params.items())
    return CheckpointIndex(source, tensors, ())


@torch.no_grad()
def score_model(model: torch.nn.Module, method: str = DEFAULT_METHOD, *, include: Iterable[str] = (),
                exclude: Iterable[str] = (), config: dict | None = None) -> list[Result]:
    """Score MODEL's weights where they are (CPU or GPU), no files: the same targets, type keys, roles and
    Result records as a file scan of its checkpoint, so every selection function applies. Tied weights are
    scored once, under their first name (as a tied checkpoint stores them)."""
    if method not in METHODS:
        raise UsageError(f"method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    params = dict(model.named_parameters())
    plan = make_plan(_memory_index(model, params, config), tuple(include), tuple(exclude))
    results = []
    for job in plan.jobs:
        W = params[job.tensor.name].detach()
        part = getattr(job, "part", None)  # an expert slice of a fused tensor, where the plan splits them
        if part is not None:
            W = W[part.key]
        start = time.perf_counter()
        if W.is_meta:
            out, status = SNR(None, "weights on the meta device (offloaded or not loaded): not scored"), "null"
        else:
            try:
                out = score(W, method, device=W.device)
                status = "ok" if out.snr is not None else "null"
            except Exception as err:  # e.g. out of GPU memory: recorded, not ranked, the rest is still scored
                out, status = SNR(None, f"{type(err).__name__}: {err}"), "error"
                log.warning("score_model: %s: %s", job.name, out.reason)
        results.append(Result(
            name=job.name, type=job.type, shape=tuple(W.shape), dtype=job.tensor.dtype, snr=out.snr, reason=out.reason,
            status=status, role=job.role, method=method, seconds=time.perf_counter() - start, worker=str(W.device),
            sigma_max=out.sigma_max, threshold=out.threshold, n_signal=out.n_signal))
    return sorted(results, key=lambda r: natural_key(r.name))


@dataclass(frozen=True)
class Rescan:
    """A re-selection from the model's current weights: per type, the scored modules that became trainable
    (``added``) and those that stopped training (``removed``)."""

    results: list[Result]
    selection: Selection
    added: dict[str, tuple[str, ...]]
    removed: dict[str, tuple[str, ...]]
    summary: TrainableSummary

    @property
    def changed(self) -> int:
        return sum(map(len, self.added.values())) + sum(map(len, self.removed.values()))

    def describe(self) -> str:
        types = sorted(set(self.added) | set(self.removed))
        parts = [f"{t} +{len(self.added.get(t, ()))} -{len(self.removed.get(t, ()))}" for t in types]
        return f"{self.changed} modules changed" + (f" ({', '.join(parts)})" if parts else "")


def _training_modules(model: torch.nn.Module, results: list[Result]) -> dict[str, set[str]]:
    """Per type, the scored modules (or expert slices, by their fused tensor) that train now."""
    names = _Names(model)
    out: dict[str, set[str]] = {}
    for r in results:
        hit = names.exact(r.name) or names.fused(r.name)
        if hit and all(names.params[n].requires_grad for n in hit):
            out.setdefault(r.type, set()).add(r.name)
    return out


def rescan(model: torch.nn.Module, top_percent: float = DEFAULT_TOP_PERCENT, method: str = DEFAULT_METHOD) -> Rescan:
    """Score MODEL's current weights, apply its top TOP_PERCENT% per type, and say which modules changed."""
    results = score_model(model, method)
    before = _training_modules(model, results)
    selection = select_top(results, top_percent)
    summary = apply_selection(model, selection)
    after = _training_modules(model, results)
    types = list(dict.fromkeys(r.type for r in results))
    added = {t: tuple(sorted(after.get(t, set()) - before.get(t, set()), key=natural_key)) for t in types}
    removed = {t: tuple(sorted(before.get(t, set()) - after.get(t, set()), key=natural_key)) for t in types}
    return Rescan(results, selection, {t: v for t, v in added.items() if v}, {t: v for t, v in removed.items() if v},
                  summary)


# ------------------------------------------------------------------------------- SNR-guided rates

def snr_param_groups(model: torch.nn.Module, results, lr: float, *, min_scale: float = 0.5,
                     max_scale: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """EXPERIMENTAL. Optimizer parameter groups whose learning rate follows the module's SNR rank in its type.

    Among the *trainable* scored modules of one type, sorted by descending SNR (rank r = 0 … n-1)::

        scale(r) = max_scale - (max_scale - min_scale) * r / (n - 1)     (n = 1: scale = max_scale)
        lr(module) = lr * scale(r)

    so the highest-SNR module of each type trains at ``lr * max_scale`` and the lowest selected one at
    ``lr * min_scale``, linearly in rank between. A module's weight and bias share its scale; trainable
    parameters without an SNR (norms, unscored modules) get ``lr`` (scale 1). Matrices get
    ``weight_decay``, vectors 0. RESULTS: a scan directory, or Results (``score_model``, ``load_results``).
    Each group carries ``scale`` and ``names``; pass the list to any torch optimizer.
    """
    if not 0 < min_scale <= max_scale:
        raise UsageError(f"scales: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    if isinstance(results, (str, Path)):
        results = load_results(results)[1]
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    modules = {n.rpartition(".")[0] for n in trainable}
    scales: dict[str, float] = {}
    for members in rank_by_type(r for r in results if r.name in modules).values():
        n = len(members)
        for rank, r in enumerate(members):
            scales[r.name] = max_scale if n == 1 else max_scale - (max_scale - min_scale) * rank / (n - 1)
    if trainable and not scales:
        raise SelectionError("snr_param_groups: the results name none of the model's trainable modules; "
                             "apply a selection first, and scan this model (or score_model it)")
    groups: dict[tuple[float, float], dict] = {}
    for name, p in trainable.items():
        scale = scales.get(name.rpartition(".")[0], 1.0)
        decay = weight_decay if p.ndim >= 2 else 0.0
        g = groups.setdefault((scale, decay), {"params": [], "names": [], "lr": lr * scale, "weight_decay": decay,
                                               "scale": scale})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], -k[1]))]


# --------------------------------------------------------------------------------- during training

class SelectionSchedule:
    """What :class:`SpectrumCallback` does, for any training loop: ``start(model, optimizer)`` before the
    first step, ``epoch_end(model, epoch, optimizer)`` after each epoch.

    SELECTION as in :func:`apply_selection`; None scans the model in memory and selects its top
    ``top_percent``%. ``rescan_every`` > 0 re-selects the top ``rescan_percent``% (default: top_percent, else
    25) from the current weights every that many epochs; ``history`` keeps (epoch, Rescan) records.
    """

    def __init__(self, selection=None, top_percent: float | None = None, *, rescan_every: int = 0,
                 rescan_percent: float | None = None, method: str = DEFAULT_METHOD,
                 replace_prefix: tuple[str, str] | None = None, strict: bool = True):
        if rescan_every < 0:
            raise UsageError(f"rescan_every {rescan_every}: must be 0 (never) or a number of epochs")
        self.selection, self.top_percent, self.rescan_every = selection, top_percent, rescan_every
        self.rescan_percent = rescan_percent or top_percent or DEFAULT_TOP_PERCENT
        self.method, self.replace_prefix, self.strict = method, replace_prefix, strict
        self.summary: TrainableSummary | None = None
        self.history: list[tuple[int, Rescan]] = []

    @property
    def started(self) -> bool:
        return self.summary is not None

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainableSummary:
        if self.selection is None:
            self.summary = rescan(model, self.top_percent or DEFAULT_TOP_PERCENT, self.method).summary
        else:
            self.summary = apply_selection(model, self.selection, self.top_percent,
                                           replace_prefix=self.replace_prefix, strict=self.strict)
        if optimizer is not None:
            sync_optimizer(optimizer, model)
        return self.summary

    def epoch_end(self, model: torch.nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> Rescan | None:
        if not self.rescan_every or epoch % self.rescan_every:
            return None
        result = rescan(model, self.rescan_percent, self.method)
        if optimizer is not None:
            sync_optimizer(optimizer, model)
        self.summary = result.summary
        self.history.append((epoch, result))
        log.info("rescan after epoch %d: %s; %s", epoch, result.describe(), result.summary)
        return result


def _callback_class():
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("SpectrumCallback needs transformers: pip install 'streamscan[train]'") from None

    class SpectrumCallback(TrainerCallback):
        """A transformers ``TrainerCallback`` (TRL's trainers too): applies the selection when the Trainer
        is built (so its optimizer holds only the selected parameters) or, if added later, when training
        starts; logs the trainable share; with ``rescan_every=k`` re-selects from the current weights every
        k epochs and adds/removes parameters in the optimizer. Arguments as :class:`SelectionSchedule`."""

        def __init__(self, selection=None, top_percent: float | None = None, **kwargs):
            self.schedule = SelectionSchedule(selection, top_percent, **kwargs)

        @property
        def summary(self) -> TrainableSummary | None:
            return self.schedule.summary

        @property
        def history(self) -> list[tuple[int, Rescan]]:
            return self.schedule.history

        def on_init_end(self, args, state, control, model=None, **kwargs):
            if model is not None and not self.schedule.started:
                self.schedule.start(model)

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if self.schedule.rescan_every and getattr(args, "world_size", 1) > 1:
                raise UsageError("rescan_every: a rescan changes which parameters train, which distributed "
                                 "training (DDP/FSDP/DeepSpeed) cannot follow; use rescan_every=0 with more than one process")
            if not self.schedule.started:
                self.schedule.start(model, optimizer)
            elif optimizer is not None:
                sync_optimizer(optimizer, model)
            log.info("training with the Spectrum selection: %s", self.schedule.summary)

        def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                return  # the last epoch: nothing left to train
            self.schedule.epoch_end(model, round(state.epoch or 0), optimizer)

    return SpectrumCallback


def __getattr__(name: str):
    if name == "SpectrumCallback":  # built on first use: transformers stays an optional dependency
        cls = _callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
