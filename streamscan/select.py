"""select: the reference's top-N%-per-type rule, and the Axolotl `unfrozen_parameters` lines for it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .layout import natural_key
from .plan import Result


@dataclass(frozen=True)
class Selection:
    percent: float
    always: tuple[str, ...]  # tensor names of the embedding and output head, unfrozen whatever their SNR
    chosen: dict[str, tuple[str, ...]]  # type -> module names, highest SNR first
    counts: dict[str, int]  # type -> number of scored members
    unscored: dict[str, int]  # type -> members without an SNR

    def names(self) -> list[str]:
        return [n for names in self.chosen.values() for n in names]


def rank_by_type(results: Iterable[Result]) -> dict[str, list[Result]]:
    """Per type (in first-seen natural order), its scored results by descending SNR, ties by name."""
    ranked: dict[str, list[Result]] = {}
    for r in sorted(results, key=lambda r: natural_key(r.name)):
        ranked.setdefault(r.type, [])
        if r.snr is not None:
            ranked[r.type].append(r)
    for members in ranked.values():
        members.sort(key=lambda r: (-r.snr, natural_key(r.name)))
    return ranked


def select_top(results: Iterable[Result], percent: float) -> Selection:
    """Per type, the int(len * percent / 100) highest-SNR matrices (the reference's rule)."""
    if not 0 < percent <= 100:
        raise ValueError(f"top percent must be in (0, 100], got {percent}")
    results = list(results)
    ranked = rank_by_type(results)
    chosen = {t: tuple(r.name for r in members[: int(len(members) * percent / 100)]) for t, members in ranked.items()}
    unscored: dict[str, int] = {}
    for r in results:
        if r.snr is None:
            unscored[r.type] = unscored.get(r.type, 0) + 1
    always = tuple(f"{r.name}.weight" for r in sorted(results, key=lambda r: (r.role != "head", r.name)) if r.role)
    return Selection(percent, always, chosen, {t: len(m) for t, m in ranked.items()}, unscored)


def module_pattern(name: str, all_names: Iterable[str]) -> str:
    """The reference writes a module name, which Axolotl applies as a prefix `re.match` (dots literal).
    Where that prefix would also catch another module (`mlp.gate` vs `mlp.gate_proj`), end it with '.'."""
    collides = any(o.startswith(name) and not o.startswith(name + ".") and o != name for o in all_names)
    return name + "." if collides else name


def yaml_text(selection: Selection, all_names: Iterable[str], header: str = "") -> str:
    """An Axolotl config fragment in the reference's layout, with a comment for types that selected nothing."""
    all_names = list(all_names)
    lines = [f"# {line}" for line in header.splitlines()] + ["unfrozen_parameters:"]
    lines += [f"- ^{name}$" for name in selection.always]
    always_modules = {n[: -len(".weight")] for n in selection.always}
    for type_, names in selection.chosen.items():
        total = selection.counts[type_]
        if not names and type_ in always_modules:
            continue
        lines.append(f"# {type_} layers")
        if not names:
            lines.append(f"#   none selected: int({total} * {selection.percent:g} / 100) = 0 of {total} scored")
        if selection.unscored.get(type_):
            lines.append(f"#   {selection.unscored[type_]} without an SNR, not ranked")
        lines += [f"- {module_pattern(n, all_names)}" for n in names]
    return "\n".join(lines) + "\n"
