"""formats: a selection for the ecosystem's other trainers, and the results JSON where Axolotl's plugin reads it.

- PEFT: ``target_modules`` (exact module names: the paper's "qLoRA + Spectrum-25"), ``target_parameters`` for
  the selected parameters that are no module (fused expert tensors: LoRA on such a parameter covers all of
  its experts) and ``modules_to_save`` (the embedding and head, which Spectrum trains whole).
- ms-swift: ``--trainable_parameters_regex`` matching exactly the selected parameters (a fused expert tensor
  whole, all of its experts).
- Axolotl's Spectrum plugin: ``./model_snr_results/snr_results_{slug}.json``, our results JSON (scored
  matrices, checkpoint names), slug as the plugin makes it from ``base_model``.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamscan.records import Result
from streamscan.results.files import write_atomic
from streamscan.results.outputs import _dumps, percent_label, results_json
from streamscan.results.selection import Selection, natural_order
from streamscan.results.trainer_names import TrainerNames

FORMATS = ("axolotl", "peft", "swift")


def _module(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def selected_parameters(selection: Selection, names: TrainerNames | None) -> tuple[list, list, list]:
    """(always, whole, partial): trainer parameter (or checkpoint module) names of the embedding/head, of
    matrices selected whole, and of parameters of which only some experts were selected."""
    always = [_module(n) for n in selection.always]
    if names is None:
        return always, list(selection.names()), []
    always = [r.param for n in always for r in names.regions.get(n, ())]
    whole: dict[str, None] = {}
    partial: dict[str, None] = {}
    for n in selection.names():
        for r in names.regions.get(n, ()):
            (whole if r.whole(names.shapes[r.param]) else partial)[r.param] = None
    return always, list(whole), [p for p in partial if p not in whole]


def peft_config(selection: Selection, names: TrainerNames | None) -> dict:
    always, whole, partial = selected_parameters(selection, names)
    if names is None:  # checkpoint module names
        return {"target_modules": whole, "target_parameters": [], "modules_to_save": always}
    modules = [p[: -len(".weight")] for p in whole if p.endswith(".weight")]
    parameters = [p for p in whole if not p.endswith(".weight")] + partial
    return {
        "target_modules": modules,
        "target_parameters": parameters,
        "modules_to_save": list(dict.fromkeys(_module(p) for p in always)),
    }


def swift_args(selection: Selection, names: TrainerNames | None) -> str:
    always, whole, partial = selected_parameters(selection, names)
    if names is None:
        body = "|".join(re.escape(m) for m in [*always, *whole])
        regex = f"^(?:{body})(?:\\.weight|\\.bias)?$"
    else:
        regex = "^(?:" + "|".join(re.escape(p) for p in [*always, *whole, *partial]) + ")$"
    quoted = "'" + regex.replace("'", "'\"'\"'") + "'"
    return f"--tuner_type full --freeze_parameters_ratio 1 --trainable_parameters_regex {quoted}"


def write_format(
    out_dir: Path, slug: str, selection: Selection, names: TrainerNames | None, fmt: str, header: str
) -> Path:
    base = Path(out_dir) / f"snr_results_{slug}"
    label = percent_label(selection.percent)
    _, _, partial = selected_parameters(selection, names)
    if fmt == "peft":
        return write_atomic(
            base.with_name(f"{base.name}_peft_{label}percent.json"), _dumps(peft_config(selection, names))
        )
    notes = [f"# {line}" for line in header.splitlines()]
    if partial:
        notes.append(
            f"# {len(partial)} fused expert parameter(s) of which some experts were selected train whole "
            "(all experts): ms-swift selects whole parameters"
        )
    text = "\n".join([*notes, swift_args(selection, names)]) + "\n"
    return write_atomic(base.with_name(f"{base.name}_swift_{label}percent.txt"), text)


def plugin_slug(model_name: str) -> str:
    """The slug Axolotl's Spectrum plugin makes of ``spectrum_model_name`` or ``base_model``."""
    return model_name.replace("/", "-").replace("_", "-")


def write_plugin_json(plugin_dir: Path, model_name: str, results: list[Result]) -> Path:
    """The results JSON (scored matrices only, D1) at ``PLUGIN_DIR/model_snr_results/snr_results_{slug}.json``,
    where the plugin looks when Axolotl runs in PLUGIN_DIR."""
    slug = plugin_slug(model_name)
    if not slug or "/" in slug or slug in (".", "..") or "\0" in slug:
        raise ValueError(f"model name {model_name!r} gives no file name")
    target = Path(plugin_dir) / "model_snr_results"
    target.mkdir(parents=True, exist_ok=True)
    scored = [r for r in results if r.snr is not None]
    return write_atomic(target / f"snr_results_{slug}.json", _dumps(results_json(natural_order(scored), ordered=True)))
