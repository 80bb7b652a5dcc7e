"""What Axolotl does with ``unfrozen_parameters`` (its utils/freeze.py), written again here, not vendored:
each line an optional trailing ``[start:end]`` dim-0 range, dots escaped unless followed by '+', ``re.match``;
a parameter any line matches trains, masked to the ranges of the ranged lines that match it."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


def parse(line: str) -> tuple[re.Pattern, tuple[int, int | None] | None]:
    m = _RANGE.match(line)
    name, rng = (m.group(1), m) if m else (line, None)
    if rng is not None:
        start = int(rng.group(2)) if rng.group(2) else 0
        if rng.group(3) is None and ":" not in line[line.rindex("[") :]:
            rng = (start, start + 1)
        else:
            rng = (start, int(rng.group(3)) if rng.group(3) else None)
    return re.compile(re.sub(r"\.(?!\+)", "\\.", name)), rng


def trained_rows(names: dict[str, int], lines: list[str]) -> tuple[dict[str, list[tuple[int, int]] | None], list[str]]:
    """NAMES: parameter -> len (dim 0). Per matched parameter its trained dim-0 ranges (None: all of it),
    and the lines that match no parameter."""
    patterns = [parse(x) for x in lines]
    out: dict[str, list[tuple[int, int]] | None] = {}
    used = set()
    for name, length in names.items():
        ranges, hit = [], False
        for i, (regex, rng) in enumerate(patterns):
            if regex.match(name) is None:
                continue
            hit = True
            used.add(i)
            if rng is not None:
                start, end = rng
                end = length if end is None else end
                if start < 0 or start >= end or (length and end > length):
                    raise ValueError(f"range {rng} of {lines[i]} outside {name} ({length})")
                ranges.append((start, end))
        if hit:
            out[name] = sorted(ranges) or None
    return out, [x for i, x in enumerate(lines) if i not in used]


def freeze_layers_except(model, lines: list[str]) -> list[str]:
    """Freeze MODEL but what LINES unfreeze, masking gradients outside the dim-0 ranges; returns the lines
    that match nothing (Axolotl says nothing about them)."""
    params = dict(model.named_parameters())
    trained, unmatched = trained_rows({n: len(p) if p.dim() else 0 for n, p in params.items()}, lines)
    for name, p in params.items():
        p.requires_grad_(name in trained)
        ranges = trained.get(name)
        if ranges:
            keep = [False] * len(p)
            for s, e in ranges:
                keep[s:e] = [True] * (e - s)
            frozen = [i for i, k in enumerate(keep) if not k]

            def hook(grad, frozen=frozen):
                grad = grad.clone()
                grad[frozen] = 0
                return grad

            p.register_hook(hook)
    return unmatched
