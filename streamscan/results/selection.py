"""selection: the reference's top-N%-per-type rule, and the Axolotl `unfrozen_parameters` lines for it."""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from streamscan.layout import natural_key
from streamscan.records import Result

if TYPE_CHECKING:
    from streamscan.results.trainer_names import TrainerNames


@dataclass(frozen=True)
class Selection:
    percent: float
    always: tuple[str, ...]  # tensor names of the embedding and output head, unfrozen whatever their SNR
    chosen: dict[str, tuple[str, ...]]  # type -> module names, highest SNR first
    counts: dict[str, int]  # type -> number of scored members
    unscored: dict[str, int]  # type -> members without an SNR

    def names(self) -> list[str]:
        return [n for names in self.chosen.values() for n in names]


Group = Callable[[str, str], str]  # (name, type) -> the group a matrix is ranked in (default: its type)


def _group(r: Result, group: Group | None) -> str:
    return group(r.name, r.type) if group else r.type


PUBLISHED_WORKER = "published"  # Result.worker of the results read from a published Spectrum scan


def natural_order(results: Iterable[Result]) -> list[Result]:
    """RESULTS sorted by the natural order of their names (stable: equal keys keep their order); the results
    of a published scan (every ``worker`` is ``PUBLISHED_WORKER``) stay in the order given, the file's: the
    reference's stable sort leaves its ties (its ``Infinity`` entries) in file order, and so does ours."""
    results = list(results)
    if results and all(r.worker == PUBLISHED_WORKER for r in results):
        return results
    keys = list(map(natural_key, map(_name, results)))
    return [results[i] for i in sorted(range(len(results)), key=keys.__getitem__)]


_name, _type = attrgetter("name"), attrgetter("type")


def rank_by_type(results: Iterable[Result], group: Group | None = None) -> dict[str, list[Result]]:
    """Per type (or per ``group``, in first-seen natural order), its scored results by descending SNR, ties by
    name (a published scan's: in file order). Degenerate matrices (SNR inf) come first, as the reference ranks them."""
    return rank_ordered(natural_order(results), group)


def rank_ordered(ordered: list[Result], group: Group | None = None) -> dict[str, list[Result]]:
    """``rank_by_type`` of results already in natural order (``natural_order``): the ranking sorts each
    group by SNR alone, the sort being stable (and reverse keeping it so) leaves ties in name order: among
    the degenerate matrices (inf) too, which precede every finite SNR."""
    ranked: dict[str, list[Result]] = {}
    key_of = _type if group is None else (lambda r: group(r.name, r.type))
    for r in ordered:
        members = ranked.get(key := key_of(r))
        if members is None:
            members = ranked[key] = []
        if r.snr is not None:
            members.append(r)
    snr = attrgetter("snr")
    for members in ranked.values():
        members.sort(key=snr, reverse=True)
    return ranked


def select_top(results: Iterable[Result], percent: float, group: Group | None = None) -> Selection:
    """Per type (or ``group``), the int(len * percent / 100) highest-SNR matrices (the reference's rule)."""
    if not 0 < percent <= 100:
        raise ValueError(f"top percent must be in (0, 100], got {percent}")
    results = list(results)
    return select_ranked(results, rank_by_type(results, group), percent, group)


def select_ranked(
    results: list[Result], ranked: dict[str, list[Result]], percent: float, group: Group | None = None
) -> Selection:
    """``select_top(results, percent, group)`` from RANKED = ``rank_by_type(results, group)``, which several
    percents can share."""
    if not 0 < percent <= 100:
        raise ValueError(f"top percent must be in (0, 100], got {percent}")
    chosen = {t: tuple(r.name for r in members[: int(len(members) * percent / 100)]) for t, members in ranked.items()}
    unscored: dict[str, int] = {}
    for r in results:
        if r.snr is None:
            key = _group(r, group)
            unscored[key] = unscored.get(key, 0) + 1
    always = tuple(
        f"{r.name}.weight" for r in sorted((r for r in results if r.role), key=lambda r: (r.role != "head", r.name))
    )
    return Selection(percent, always, chosen, {t: len(m) for t, m in ranked.items()}, unscored)


def axolotl_escape(name: str) -> str:
    """NAME as a pattern Axolotl's ``utils/freeze.py`` matches literally: every regex metacharacter escaped
    but the dots, which Axolotl escapes itself (``re.sub(r"\\.(?!\\+)", "\\\\.", line)``; a ``+`` after a dot
    is escaped here, so no dot stays a wildcard). ``^`` + it + ``$`` matches NAME and nothing else."""
    return "".join("\\" + ch if ch in _METACHARACTERS else ch for ch in name)


_METACHARACTERS = frozenset("\\^$*+?{}[]()|")  # special outside a character class (dots: see above)


class Prefixes:
    """Every module name, sorted once: whether a name is a prefix of another costs two bisections, so a
    YAML of k lines over n names costs O((n + k) log n) (a scan over every name per line was quadratic)."""

    def __init__(self, all_names: Iterable[str]):
        self.names = list(dict.fromkeys(sorted(all_names)))  # = sorted(set(...)); a scan's names come nearly sorted
        self._patterns: dict[str, str] = {}  # name -> pattern, for the YAMLs of several percents

    def collides(self, name: str) -> bool:
        """True if another name starts with NAME other than as ``NAME.…`` (``mlp.gate`` vs ``mlp.gate_proj``)."""
        names = self.names
        # names starting with NAME are contiguous; those starting with NAME + "." lie between NAME + "." and NAME + "/"
        i = bisect_right(names, name)
        if i < len(names) and names[i].startswith(name) and names[i][len(name)] != ".":
            return True
        j = bisect_left(names, name + "/", i)
        return j < len(names) and names[j].startswith(name)

    def nests(self, name: str) -> bool:
        """True if another name starts with ``NAME.`` (a module inside the module NAME)."""
        names, inner = self.names, name + "."
        i = bisect_right(names, inner)
        return (i > 0 and names[i - 1] == inner) or (i < len(names) and names[i].startswith(inner))

    def pattern(self, name: str) -> str:
        """The reference writes a module name, which Axolotl applies as a prefix `re.match` (dots literal).
        Where that prefix would also catch another module (`mlp.gate` vs `mlp.gate_proj`), end it with '.';
        where a module lies inside it, name its own weight and bias only. Regex metacharacters in a name are
        escaped (``axolotl_escape``), so a line matches that module's parameters and nothing else."""
        pattern = self._patterns.get(name)
        if pattern is None:
            escaped = axolotl_escape(name)
            if self.nests(name):
                pattern = f"^{escaped}(.weight|.bias)?$"
            else:
                pattern = escaped + "." if self.collides(name) else escaped
            self._patterns[name] = pattern
        return pattern


def module_pattern(name: str, all_names: Iterable[str] | Prefixes) -> str:
    """``Prefixes(all_names).pattern(name)``; pass a Prefixes when asking for many names."""
    prefixes = all_names if isinstance(all_names, Prefixes) else Prefixes(all_names)
    return prefixes.pattern(name)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")  # a name YAML reads back as the same string, unquoted
_PLAIN_ANCHORED = re.compile(r"\^[A-Za-z0-9_./-]+\$")
# words YAML 1.1 resolves to booleans or null when unquoted (PyYAML's resolver, plus y/n of other readers)
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def yaml_quoted(text: str) -> str:
    """TEXT as a YAML double-quoted scalar, all ASCII: every reader gets TEXT back, nothing can escape it."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def yaml_item(text: str) -> str:
    """One list item's scalar: as today for an ordinary module name or ``^name$``, quoted otherwise."""
    plain = _PLAIN_ANCHORED.fullmatch(text) or (_PLAIN_NAME.fullmatch(text) and text.lower() not in _YAML_WORDS)
    return text if plain else yaml_quoted(text)


def _comment(text: str) -> str:
    """A name inside a comment: as is when printable, else quoted, so no line break can end the comment."""
    return text if text.isprintable() else yaml_quoted(text)


def yaml_text(
    selection: Selection,
    all_names: Iterable[str] | Prefixes,
    header: str = "",
    fused: Mapping[str, str] | None = None,
    names: TrainerNames | None = None,
) -> str:
    """An Axolotl config fragment in the reference's layout, with a comment for types that selected nothing.

    NAMES (``trainer_names``): the lines name the parameters of the model transformers builds, one
    ``^param$`` per whole parameter and one ``^param$[e:e+1]`` (Axolotl's dim-0 range) per expert of a
    fused parameter; a comment says where a range trains more than was selected (the other half of an
    expert's fused gate/up rows). Without NAMES the lines are the checkpoint's module names (the
    reference's), and ``fused`` maps expert-slice names to their fused tensor: selected slices are listed
    as comments and each fused tensor gets a commented-out line that would unfreeze it whole."""
    if names is not None:
        return _trainer_yaml(selection, header, names)
    fused = fused or {}
    whole: dict[str, list[str]] = {}
    prefixes = all_names if isinstance(all_names, Prefixes) else Prefixes(all_names)
    lines = [f"# {line}" for line in header.splitlines()] + ["unfrozen_parameters:"]
    lines += [f"- {yaml_item(f'^{axolotl_escape(name)}$')}" for name in selection.always]
    always_modules = {n[: -len(".weight")] for n in selection.always}
    for type_, chosen in selection.chosen.items():
        lines += _type_comments(selection, type_, chosen, always_modules)
        for n in chosen:
            if n in fused:
                whole.setdefault(fused[n], []).append(n)
                lines.append(f"#   {_comment(n)} (slice of a fused tensor, see the end)")
            else:
                lines.append(f"- {yaml_item(prefixes.pattern(n))}")
    if whole:
        lines.append("# fused expert tensors: a selected expert slice cannot be unfrozen alone, only the whole tensor")
        lines.append("# (all of its experts). Uncomment a line to train that tensor whole:")
        for tensor, slices in whole.items():
            lines.append(f"#   {_comment(tensor)}: {len(slices)} selected slice(s)")
            lines.append(f"# - {yaml_item(f'^{axolotl_escape(tensor)}$')}")
    return "\n".join(lines) + "\n"


def _type_comments(selection: Selection, type_: str, chosen: tuple[str, ...], always_modules: set[str]) -> list[str]:
    total = selection.counts[type_]
    if not chosen and type_ in always_modules:
        return []
    out = [f"# {_comment(type_)} layers"]
    if not chosen:
        out.append(f"#   none selected: int({total} * {selection.percent:g} / 100) = 0 of {total} scored")
    if selection.unscored.get(type_):
        out.append(f"#   {selection.unscored[type_]} without an SNR, not ranked")
    return out


@dataclass(frozen=True)
class Line:
    """One ``unfrozen_parameters`` line in trainer names: parameter PARAM, rows ROWS (dim 0) or all of it;
    REGIONS: the selected parts of it (where they are less than the line unfreezes)."""

    param: str
    rows: tuple[int, int] | None
    extra: int  # elements the line unfreezes beyond the selected ones (0: exact)
    regions: tuple = ()

    @property
    def text(self) -> str:
        line = f"^{axolotl_escape(self.param)}$"
        return line if self.rows is None else f"{line}[{self.rows[0]}:{self.rows[1]}]"


def trainer_lines(selection: Selection, names: TrainerNames) -> dict[str, list[Line]]:
    """Per selected name (the embedding and head under their module names first), its lines in trainer names:
    a whole parameter, or per dim-0 span (an expert of a fused parameter) one ranged line. Names without a
    trainer name (``names.unmapped``) get none."""
    wanted: dict[str, list] = {}
    order = [n[: -len(".weight")] if n.endswith(".weight") else n for n in selection.always] + selection.names()
    for n in order:
        wanted[n] = list(names.regions.get(n, ()))
    covered: dict[tuple[str, tuple[int, int] | None], dict] = {}  # line -> the distinct selected regions under it
    for regions in wanted.values():
        for region in regions:
            covered.setdefault(_line_key(region, names.shapes[region.param]), {})[region.key] = region
    out: dict[str, list[Line]] = {}
    for n, regions in wanted.items():
        lines = out[n] = []
        for region in regions:
            param, rows = key = _line_key(region, names.shapes[region.param])
            shape = names.shapes[param]
            size = (rows[1] - rows[0] if rows else shape[0]) * math.prod(shape[1:]) if shape else 1
            under = tuple(covered[key].values())
            extra = size - sum(r.numel() for r in under)
            lines.append(Line(param, rows, extra, under if extra else ()))
    return out


def region_text(key) -> str:
    """A region's spans as ``[a:b:s, ...]`` (read back by ``parse_region``)."""
    return "[" + ", ".join(f"{a}:{b}:{s}" for a, b, s in key) + "]"


_REGION = re.compile(r"\[(\d+:\d+:\d+(?:, \d+:\d+:\d+)*)\]")
EXACT = "#   ^ apply_selection trains only "


def parse_region(text: str) -> tuple[tuple[int, int, int], ...] | None:
    m = _REGION.fullmatch(text.strip())
    if not m:
        return None
    return tuple(tuple(int(x) for x in span.split(":")) for span in m.group(1).split(", "))  # type: ignore[misc]


def _line_key(region, shape: tuple[int, ...]) -> tuple[str, tuple[int, int] | None]:
    """The Axolotl line that covers REGION: the whole parameter, or its dim-0 rows (start, stop)."""
    if region.whole(shape) or not shape:
        return region.param, None
    start, stop, step = region.key[0]
    if step != 1:  # rows every STEP-th: their dim-0 hull
        stop = start + (len(range(start, stop, step)) - 1) * step + 1
    return region.param, (start, stop)


def _trainer_yaml(selection: Selection, header: str, names: TrainerNames) -> str:
    per_name = trainer_lines(selection, names)
    lines = [f"# {line}" for line in (header + "\n" + names.line()).strip().splitlines()]
    lines.append("unfrozen_parameters:")
    written: set[str] = set()

    def emit(name: str) -> None:
        if name in names.unmapped:
            lines.append(f"#   {_comment(name)}: no trainer parameter ({_comment(names.unmapped[name])})")
        for line in per_name.get(name, ()):
            if line.text in written:
                continue
            written.add(line.text)
            lines.append(f"- {yaml_item(line.text)}")
            if line.extra:
                lines.append(
                    f"#   ^ also trains {line.extra:,} unselected elements of these rows (Axolotl's dim-0 ranges "
                    "cannot separate an expert's gate rows from its up rows)"
                )
                lines.extend(f"{EXACT}{region_text(r.key)}" for r in line.regions)

    always_modules = set()
    for n in selection.always:
        module = n[: -len(".weight")] if n.endswith(".weight") else n
        always_modules.add(module)
        emit(module)
    for type_, chosen in selection.chosen.items():
        lines += _type_comments(selection, type_, chosen, always_modules)
        for n in chosen:
            emit(n)
    return "\n".join(lines) + "\n"
