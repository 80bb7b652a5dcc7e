"""match: selection entries (a scan directory, a YAML file, a Selection, names or patterns) -> parameters.

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
import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from streamscan.api import load_results
from streamscan.errors import SelectionError, UsageError
from streamscan.results.selection import Selection, select_top

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

DEFAULT_TOP_PERCENT = 25.0
_PLAIN = re.compile(r"^\^?([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\.?\$?$")
_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")  # Axolotl's "[start:end]" row-range suffix
_SLICE = re.compile(r"^[A-Za-z0-9_.]+\[\d+\](\.[A-Za-z0-9_]+)?$")  # an expert slice: `….experts.gate_up_proj[3].gate`
# Leaf names of one projection in unfused layouts -> the word naming it inside a fused parameter's leaf.
_FUSED_WORDS = {
    "gate_proj": "gate",
    "w1": "gate",
    "linear": "gate",
    "up_proj": "up",
    "w3": "up",
    "v1": "up",
    "linear_v": "up",
    "down_proj": "down",
    "w2": "down",
    "linear_1": "down",
}


# ----------------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class Rule:
    line: str  # as given (after replace_prefix)
    name: str | None  # a plain dotted name, matched exactly
    regex: re.Pattern | None  # any other line, matched as Axolotl does


def make_rule(line: str) -> Rule:
    line = line.strip()
    plain = _PLAIN.match(line)
    if plain:
        return Rule(line, plain.group(1), None)
    if _SLICE.match(line) and not line.split("[", 1)[0].endswith((".weight", ".bias")):
        return Rule(line, line, None)  # a scan's slice name; `x.weight[5]` stays Axolotl's row range
    if _RANGE.match(line):
        raise SelectionError(
            f"selection line {line!r}: Axolotl's [start:end] row ranges are not supported by "
            "apply_selection; unfreeze the whole parameter (drop the range) or train with Axolotl"
        )
    try:
        return Rule(line, None, re.compile(re.sub(r"\.(?!\+)", r"\\.", line)))
    except re.error as err:
        raise SelectionError(
            f"selection line {line!r} is not a valid regular expression ({err}); fix the YAML"
        ) from None


class Names:
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
                reduced = parts[:i] + parts[i + 1 :]
                hit = self.exact(".".join(reduced))
                if hit:
                    return hit
                module, leaf = ".".join(reduced[:-1]), reduced[-1]
                word = _FUSED_WORDS.get(leaf, leaf.removesuffix("_proj"))
                found = [
                    n
                    for n in self.under(module + ".")
                    if "." not in n[len(module) + 1 :] and word in n[len(module) + 1 :].split("_")
                ]
                if len(found) == 1:
                    return found
        return []

    def resolve(self, rule: Rule) -> tuple[list[str], bool]:
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


def missing_error(missing: list[str], total: int, names: Names) -> SelectionError:
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


def selection_rules(selection, top_percent: float | None) -> list[Rule]:
    """The entries of SELECTION: a scan directory, a YAML file, a Selection, or names/patterns."""
    if isinstance(selection, Selection):
        return [Rule(n, n, None) for n in (*selection.always, *selection.names())]  # names, never patterns
    if isinstance(selection, (str, Path)):
        path = Path(selection).expanduser()
        if path.is_file() and path.suffix == ".json":  # a published results JSON, or some other JSON
            try:
                return selection_rules(select_top(load_results(path)[1], top_percent or DEFAULT_TOP_PERCENT), None)
            except UsageError as err:
                raise SelectionError(
                    f"{selection}: neither a streamscan scan directory, a Spectrum results .json nor a .yaml "
                    f"selection ({str(err).split(': ', 1)[-1].split(';')[0]})"
                ) from None
        if path.is_dir():
            header, results = load_results(path)
            if len(results) < len(header.targets):
                log.warning(
                    "%s: partial scan (%d of %d matrices); selecting among those scored",
                    path,
                    len(results),
                    len(header.targets),
                )
            return selection_rules(select_top(results, top_percent or DEFAULT_TOP_PERCENT), None)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            if top_percent is not None:
                raise UsageError(
                    f"{path}: a YAML selection already fixes its percentage; pass the scan "
                    "directory instead to choose top_percent"
                )
            return [make_rule(x) for x in _yaml_lines(path)]
        raise SelectionError(
            f"{selection}: neither a streamscan scan directory, a Spectrum results .json nor a .yaml selection; "
            "give the --out directory of `streamscan run`, a snr_results_*.json or an unfrozen-parameters YAML"
        )
    lines = list(selection)
    if not all(isinstance(x, str) for x in lines):
        raise UsageError("selection: give a scan directory, a YAML path, a Selection or a list of names")
    return [make_rule(x) for x in lines]


def rename_rule(rule: Rule, old: str, new: str) -> Rule:
    if rule.name is not None:
        return (
            Rule(new + rule.name[len(old) :], new + rule.name[len(old) :], None) if rule.name.startswith(old) else rule
        )
    anchor = "^" if rule.line.startswith("^") else ""
    body = rule.line[len(anchor) :]
    return make_rule(anchor + new + body[len(old) :]) if body.startswith(old) else rule


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
        raise SelectionError(
            f"{path}: no `unfrozen_parameters:` list of strings; regenerate it with `streamscan select`"
        )
    return lines
