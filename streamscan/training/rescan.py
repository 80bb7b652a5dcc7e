"""rescan: score an in-memory model's weights (the file scan's executor, no files) and re-select during training."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from streamscan.checkpoint.memory import memory_index
from streamscan.compute.backends import device_for
from streamscan.compute.executor import error_result, oom_types, score_job
from streamscan.compute.spectrum import DEFAULT_METHOD, METHODS
from streamscan.errors import UsageError
from streamscan.layout import natural_key
from streamscan.planning.plan import make_plan
from streamscan.records import Result
from streamscan.results.selection import Selection, select_top
from streamscan.results.trainer_names import Region
from streamscan.training.apply import TrainableSummary, apply_selection
from streamscan.training.match import DEFAULT_TOP_PERCENT, Names, Rule

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ in-memory scans


@torch.no_grad()
def score_model(
    model: torch.nn.Module,
    method: str = DEFAULT_METHOD,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    config: dict | None = None,
) -> list[Result]:
    """Score MODEL's weights where they are (CPU or GPU), no files: the same targets, type keys, roles and
    Result records as a file scan of its checkpoint, so every selection function applies. Tied weights are
    scored once, under their first name (as a tied checkpoint stores them)."""
    if method not in METHODS:
        raise UsageError(f"method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    params = dict(model.named_parameters())
    if config is None:
        cfg = getattr(model, "config", None)
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    plan = make_plan(memory_index(params, config, type(model).__name__), tuple(include), tuple(exclude))
    results = []
    for job in plan.jobs:
        W = params[job.tensor.name].detach()
        if job.part is not None:  # an expert slice of a fused tensor
            W = W[job.part.key]
        device = str(W.device)
        try:
            result = score_job(job, W, method, device, device_for(device))
        except oom_types() as err:  # recorded, not ranked; the rest is still scored
            result = error_result(job, method, device, err, 0.0)
        if result.status == "error":
            log.warning("score_model: %s: %s", job.name, result.reason)
        results.append(result)
    return sorted(results, key=lambda r: natural_key(r.name))


def model_rules(model: torch.nn.Module, selection: Selection) -> list[Rule]:
    """SELECTION of ``score_model`` results (the model's own names) as rules: a selected expert slice of a
    fused parameter trains that slice alone (``Region``), any other name its module or parameter."""
    params = dict(model.named_parameters())
    cfg = getattr(model, "config", None)
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    plan = make_plan(memory_index(params, config, type(model).__name__), (), ())
    parts = {j.name: j for j in plan.jobs if j.part is not None}
    rules = []
    for name in (*selection.always, *selection.names()):
        job = parts.get(name)
        if job is None:
            rules.append(Rule(name, name, None))
            continue
        shape = tuple(params[job.tensor.name].shape)
        key = tuple(
            (k, k + 1, 1) if isinstance(k, int) else (k.start, k.stop, k.step or 1) for k in job.part.key
        ) + tuple((0, n, 1) for n in shape[len(job.part.key) :])
        rules.append(Rule(name, None, None, regions=(Region(job.tensor.name, key),)))
    return rules


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


def training_modules(model: torch.nn.Module, results: list[Result]) -> dict[str, set[str]]:
    """Per type, the scored modules (or expert slices, by their fused tensor) that train now."""
    names = Names(model)
    out: dict[str, set[str]] = {}
    for r in results:
        hit = names.exact(r.name) or names.fused(r.name)
        if hit and all(names.params[n].requires_grad for n in hit):
            out.setdefault(r.type, set()).add(r.name)
    return out


def rescan(model: torch.nn.Module, top_percent: float = DEFAULT_TOP_PERCENT, method: str = DEFAULT_METHOD) -> Rescan:
    """Score MODEL's current weights, apply its top TOP_PERCENT% per type, and say which modules changed."""
    results = score_model(model, method)
    before = training_modules(model, results)
    selection = select_top(results, top_percent)
    summary = apply_selection(model, model_rules(model, selection), names="checkpoint")
    after = training_modules(model, results)
    types = list(dict.fromkeys(r.type for r in results))
    added = {t: tuple(sorted(after.get(t, set()) - before.get(t, set()), key=natural_key)) for t in types}
    removed = {t: tuple(sorted(before.get(t, set()) - after.get(t, set()), key=natural_key)) for t in types}
    return Rescan(
        results, selection, {t: v for t, v in added.items() if v}, {t: v for t, v in removed.items() if v}, summary
    )
