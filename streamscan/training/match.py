"""match: selection entries (a scan directory, a YAML file, a Selection, names or patterns) -> parameters.

Matching a selection to parameter names
- A plain dotted name (optionally ``^…$``-anchored or ending in ``.``, as the YAML writer emits them)
  names exactly one parameter or one module, whose parameters are all unfrozen. Unlike Axolotl's prefix
  ``re.match``, ``model.layers.1`` never catches ``model.layers.11`` and ``mlp.gate`` never ``mlp.gate_proj``.
- Any other line is a regular expression applied as Axolotl's ``utils/freeze.py`` applies it: dots are
  literal unless followed by ``+``, and it is matched with ``re.match`` (anchored at the start only).
- A line may end in Axolotl's dim-0 range ``[start:end]`` (``^…experts.down_proj$[3:4]``: expert 3): only
  those rows train (gradient masks). The YAML writer's ``# ^ apply_selection trains only [...]`` comment under
  such a line narrows it to the selected slice (one expert's gate rows, not its up rows).
- A scan directory, results JSON or ``Selection`` is matched in the trainer's names (``trainer_names``):
  each selected matrix trains exactly its slice of the parameter transformers loads it into.
- A checkpoint name of a fused expert (``…experts.3.gate_proj`` for a 3-D ``…experts.gate_up_proj``) that
  has no trainer name unfreezes that parameter whole (``summary.fused`` lists which).
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
from streamscan.results.selection import EXACT, Selection, parse_region, select_top
from streamscan.results.trainer_names import names_for

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
    rows: tuple[int, int | None] | None = None  # Axolotl's dim-0 range
    exact: tuple[tuple[tuple[int, int, int], ...], ...] = ()  # the selected slices under a ranged line
    regions: tuple = ()  # trainer-name regions (Region) of a selected matrix: name and regex are None


def make_rule(line: str, exact: tuple = ()) -> Rule:
    line = line.strip()
    ranged = _RANGE.match(line)
    if ranged and not (_SLICE.match(line) and not ranged.group(1).endswith((".weight", ".bias"))):
        start = int(ranged.group(2) or 0)
        end = int(ranged.group(3)) if ranged.group(3) else (None if ":" in line[line.rindex("[") :] else start + 1)
        if end is not None and end <= start:
            raise SelectionError(f"selection line {line!r}: empty row range [{start}:{end}]; fix the YAML")
        rule = make_rule(ranged.group(1))
        if rule.name is not None:  # a plain name with a range: match it as Axolotl does, a regex
            rule = Rule(rule.line, None, re.compile(re.sub(r"\.(?!\+)", r"\\.", ranged.group(1))))
        return Rule(line, None, rule.regex, (start, end), exact)
    plain = _PLAIN.match(line)
    if plain:
        return Rule(line, plain.group(1), None)
    if _SLICE.match(line) and not line.split("[", 1)[0].endswith((".weight", ".bias")):
        return Rule(line, line, None)  # a scan's slice name; `x.weight[5]` stays Axolotl's row range
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
        if rule.regions:
            return list(dict.fromkeys(r.param for r in rule.regions if r.param in self.params)), False
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


def selection_rules(selection, top_percent: float | None, model=None, names: str = "auto") -> list[Rule]:
    """The entries of SELECTION: a scan directory, a YAML file, a Selection, or names/patterns. A selection
    (directory, results JSON, Selection) is matched in MODEL's parameter names where transformers' names
    differ from the checkpoint's (NAMES, see ``trainer_names.names_for``)."""
    chosen = _as_selection(selection, top_percent)
    if chosen is not None:
        return _selected_rules(chosen, model, names)
    if isinstance(selection, (str, Path)):
        path = Path(selection).expanduser()
        if top_percent is not None:
            raise UsageError(
                f"{path}: a YAML selection already fixes its percentage; pass the scan directory instead to "
                "choose top_percent"
            )
        return [make_rule(x, exact) for x, exact in _yaml_lines(path)]
    return [x if isinstance(x, Rule) else make_rule(x) for x in selection]


def _as_selection(selection, top_percent: float | None) -> Selection | None:
    """SELECTION as a Selection (a scan directory or results JSON: its top TOP_PERCENT%); None for a YAML
    file or a list of lines."""
    if isinstance(selection, Selection):
        return selection
    if isinstance(selection, (str, Path)):
        path = Path(selection).expanduser()
        if path.is_file() and path.suffix == ".json":  # a published results JSON, or some other JSON
            try:
                return select_top(load_results(path)[1], top_percent or DEFAULT_TOP_PERCENT)
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
            return select_top(results, top_percent or DEFAULT_TOP_PERCENT)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            return None
        raise SelectionError(
            f"{selection}: neither a streamscan scan directory, a Spectrum results .json nor a .yaml selection; "
            "give the --out directory of `streamscan run`, a snr_results_*.json or an unfrozen-parameters YAML"
        )
    lines = list(selection)
    if not all(isinstance(x, (str, Rule)) for x in lines):
        raise UsageError("selection: give a scan directory, a YAML path, a Selection or a list of names")
    return None


def _selected_rules(selection: Selection, model, names: str) -> list[Rule]:
    """One rule per selected matrix: its regions in MODEL's parameters where transformers names them
    otherwise than the checkpoint, else its (checkpoint) name."""
    modules = [n[: -len(".weight")] if n.endswith(".weight") else n for n in selection.always]
    plain = [Rule(n, n, None) for n in (*selection.always, *selection.names())]  # names, never patterns
    checkpoint = getattr(model, "name_or_path", "") if model is not None else ""
    if names == "checkpoint" or not checkpoint or not hasattr(model, "config"):
        return plain
    trainer, note = names_for(str(checkpoint), [*modules, *selection.names()], names, model=model)
    log.info("selection matched in the %s", note)
    if trainer is None:
        return plain
    rules = []
    for n, rule in zip([*modules, *selection.names()], plain):
        regions = trainer.regions.get(n)
        rules.append(Rule(n, None, None, regions=regions) if regions else rule)
    return rules


def rename_rule(rule: Rule, old: str, new: str) -> Rule:
    if rule.name is not None:
        return (
            Rule(new + rule.name[len(old) :], new + rule.name[len(old) :], None) if rule.name.startswith(old) else rule
        )
    anchor = "^" if rule.line.startswith("^") else ""
    body = rule.line[len(anchor) :]
    return make_rule(anchor + new + body[len(old) :]) if body.startswith(old) else rule


def _yaml_lines(path: Path) -> list[tuple[str, tuple]]:
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
    return list(zip(lines, _exact_comments(path.read_text(), len(lines))))


def _exact_comments(text: str, count: int) -> list[tuple]:
    """Per list item of TEXT (the YAML writer's layout), the slices its ``# ^ apply_selection trains only``
    comments name; () for items without."""
    out: list[list] = []
    for raw in text.splitlines():
        if raw.startswith("- "):
            out.append([])
        elif raw.startswith(EXACT) and out:
            region = parse_region(raw[len(EXACT) :])
            if region is not None:
                out[-1].append(region)
    if len(out) != count:  # not the writer's layout: the lines as Axolotl reads them
        return [()] * count
    return [tuple(x) for x in out]
