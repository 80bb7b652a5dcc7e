"""Selections that land: per architecture, what a 25% Spectrum selection trains in transformers' model.

Tiny random models of each architecture are built and saved by transformers itself (tests/training/tiny_models),
scanned by streamscan, loaded with transformers, and the 25% selection applied (a) as Axolotl's utils/freeze.py
applies the YAML (tests/training/axolotl.py: dots escaped, re.match, dim-0 ranges), one AdamW step with weight
decay 0, and (b) with ``apply_selection`` on the scan directory, one AdamW step with weight decay 0.1 and
``mask_optimizer``. Counted: elements the selection names, and elements the step changed.

Run: python -m bench.selections        (prints the table, writes the "selections" section of bench/RESULTS.md)
"""

from __future__ import annotations

import json
import re
import sys

import torch
import transformers
import yaml

import streamscan
from bench.common import CACHE, update_section
from streamscan.results.selection import select_top
from streamscan.results.trainer_names import names_for
from streamscan.training.apply import mask_optimizer
from tests.training import axolotl
from tests.training.test_trainer_names import unscored_matrices
from tests.training.tiny_models import ARCHS, build


def load(path):
    cls = getattr(transformers, json.loads((path / "config.json").read_text())["architectures"][0])
    return cls.from_pretrained(path, dtype=torch.float32)


def step(model, weight_decay: float) -> tuple[int, int]:
    """(elements changed by one AdamW step on a loss giving every element a gradient, frozen-slice moments != 0)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=weight_decay)
    mask_optimizer(opt)
    gen = torch.Generator().manual_seed(0)
    sum((p * torch.randn(p.shape, generator=gen)).sum() for p in params).backward()
    opt.step()
    return sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())


def row(arch: str) -> dict:
    root = CACHE / "tiny-transformers" / transformers.__version__
    plain, _ = build(arch, root)
    out = root / f"{arch}-scan"
    if not out.exists():
        streamscan.scan(plain, out, top_percent=[25], devices="cpu", cpu_workers=1)
    header, results = streamscan.load_results(out)
    names, note = names_for(str(plain), list(header.targets), "auto")
    text = next(out.glob("*_25percent.yaml")).read_text()
    lines = yaml.safe_load(text)["unfrozen_parameters"]
    selection = select_top(results, 25)
    full, _ = names_for(str(plain), list(header.targets), "transformers")
    wanted = [a[: -len(".weight")] for a in selection.always] + selection.names()
    selected = sum(r.numel() for n in wanted for r in full.regions.get(n, ())) if full else None
    model = load(plain)
    unmatched = axolotl.freeze_layers_except(model, lines)
    ax = step(model, 0.0)
    model = load(plain)
    streamscan.apply_selection(model, out, 25)
    ap = step(model, 0.1)
    return {
        "arch": arch,
        "names": "transformers" if names is not None else "checkpoint",
        "matrices": len(header.targets),
        "unscored": len(unscored_matrices(header, results)),
        "unmapped": len(full.unmapped) if full else "-",
        "lines": len(lines),
        "unmatched": len(unmatched),
        "selected": selected,
        "axolotl": ax,
        "apply": ap,
        "extra": sum(int(x.replace(",", "")) for x in re.findall(r"also trains ([\d,]+) unselected", text)),
    }


def main(archs: list[str]) -> None:
    transformers.logging.set_verbosity_error()
    rows = [row(a) for a in archs]
    head = (
        f"## Selections in the trainer's names (`python -m bench.selections`)\n"
        f"transformers {transformers.__version__}, torch {torch.__version__}; tiny random models built and saved by "
        "transformers (hidden 16, 4 layers, 4 experts), 25% per type. Axolotl: its freeze.py semantics, AdamW "
        "weight decay 0; apply_selection: scan directory, AdamW weight decay 0.1 + mask_optimizer. Elements "
        "changed by one step on a loss that gives every element a gradient. `extra`: what the YAML's comments "
        "say Axolotl trains beyond the selection (the other gate/up half of an expert's rows). Unscored: weight "
        "matrices and 3-D expert tensors without an SNR (tests/training/test_trainer_names.unscored_matrices: "
        "norms, biases, convolutions, A_log and position tables are no weight matrices).\n\n"
        "| architecture | YAML names | matrices / unscored | lines / matching nothing | selected elements "
        "| trained (Axolotl) | extra (declared) | trained (apply_selection) |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['arch']} | {r['names']} | {r['matrices']} / {r['unscored']} | {r['lines']} / {r['unmatched']} "
        f"| {r['selected']:,} | {r['axolotl']:,} | {r['extra']:,} | {r['apply']:,} |\n"
        for r in rows
    )
    text = head + body
    print(text)
    update_section("selections", text)


if __name__ == "__main__":
    main(sys.argv[1:] or list(ARCHS))
