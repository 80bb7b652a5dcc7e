"""The same selection for PEFT and ms-swift, and our results JSON read by Axolotl's Spectrum plugin."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402, F401

import streamscan  # noqa: E402
from streamscan.cli import main  # noqa: E402
from streamscan.records import Result  # noqa: E402
from streamscan.results.formats import plugin_slug, write_plugin_json  # noqa: E402
from streamscan.results.selection import select_top  # noqa: E402
from tests.training.test_trainer_names import load, tiny  # noqa: E402, F401


def plugin_lines(snr_data: dict, top_fraction: float) -> list[str]:
    """Axolotl's SpectrumPlugin._generate_unfrozen_params_yaml, written again (not vendored)."""
    by_type: dict[str, list] = {}
    for layer_name, info in snr_data.items():
        by_type.setdefault(info["type"], []).append((layer_name, info["snr"]))
    top = {
        t: [n for n, _ in sorted(layers, key=lambda x: x[1], reverse=True)[: int(len(layers) * top_fraction)]]
        for t, layers in by_type.items()
    }
    return ["^lm_head.weight$", "^model.embed_tokens.weight$"] + [n for t in top for n in top[t]]


def r(name, type_, snr, reason=None):
    status = "ok" if snr is not None else "null"
    return Result(name=name, type=type_, shape=(8, 8), dtype="F32", snr=snr, reason=reason, status=status)


def test_the_plugin_reads_our_json_with_unscored_matrices_and_selects_what_we_select(tmp_path):
    results = [r(f"model.layers.{i}.mlp.down_proj", "mlp.down_proj", float(i % 5) + 0.5) for i in range(9)]
    results += [r(f"model.layers.{i}.self_attn.v_proj", "self_attn.v_proj", float(i)) for i in range(7)]
    results += [r("model.layers.9.mlp.down_proj", "mlp.down_proj", None, "rank 0")]  # unscored
    path = write_plugin_json(tmp_path, "org/My_Model", results)
    assert (
        path
        == tmp_path / "model_snr_results" / "snr_results_org-My-Model.json"
        == tmp_path / (f"model_snr_results/snr_results_{plugin_slug('org/My_Model')}.json")
    )
    lines = plugin_lines(json.loads(path.read_text()), 0.25)  # a null SNR would raise TypeError here
    assert lines[2:] == select_top(results, 25).names()


def test_select_writes_the_plugin_file_peft_and_swift_for_the_same_selection(tiny, tmp_path):  # noqa: F811
    plain, _, out = tiny("qwen3_moe")
    header, results = streamscan.load_results(out)
    run = CliRunner().invoke(
        main,
        [
            "select",
            str(out),
            "-p",
            "25",
            "--names",
            "checkpoint",
            "--dest",
            str(tmp_path),
            "--plugin-dir",
            str(tmp_path / "ax"),
            "--plugin-model",
            "org/qwen3_moe",
        ],
    )
    assert run.exit_code == 0, run.output
    yaml_path, plugin = map(type(tmp_path), run.output.split())
    import yaml

    ours = yaml.safe_load(yaml_path.read_text())["unfrozen_parameters"]
    theirs = plugin_lines(json.loads(plugin.read_text()), 0.25)
    assert theirs[2:] == select_top(results, 25).names()
    assert [x for x in ours if not x.startswith("^")] == theirs[2:]  # plain module names, in checkpoint names
    # PEFT: exact module names of the transformers model, fused experts as parameters, embedding/head saved
    peft_run = CliRunner().invoke(
        main, ["select", str(out), "-p", "25", "--format", "peft", "--dest", str(tmp_path), "--model", str(plain)]
    )
    cfg = json.loads(type(tmp_path)(peft_run.output.strip()).read_text())
    model = load(plain)
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    assert cfg["target_modules"] and set(cfg["target_modules"]) <= set(modules)
    assert cfg["target_parameters"] and set(cfg["target_parameters"]) <= set(params)
    assert all(p.endswith(("gate_up_proj", "down_proj")) and params[p].dim() == 3 for p in cfg["target_parameters"])
    assert set(cfg["modules_to_save"]) == {"lm_head", "model.embed_tokens"}
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, **cfg))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) > 0
    # ms-swift: a regex matching exactly the selected parameters (fused expert tensors whole)
    swift_run = CliRunner().invoke(
        main, ["select", str(out), "-p", "25", "--format", "swift", "--dest", str(tmp_path), "--model", str(plain)]
    )
    text = type(tmp_path)(swift_run.output.strip()).read_text()
    regex = re.compile(text.splitlines()[-1].split("--trainable_parameters_regex ")[1].strip("'"))
    matched = {n for n in params if regex.match(n)}
    want = {f"{m}.weight" for m in cfg["target_modules"]} | set(cfg["target_parameters"])
    assert matched == want | {"lm_head.weight", "model.embed_tokens.weight"}
    assert "train whole (all experts)" in text
