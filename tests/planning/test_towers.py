"""Multimodal towers: vision-tower matrices rank apart from the language tower's of the same type key (the
JSON's type stays the reference's), and a selection can be limited to one tower."""

import json

import pytest
import torch
from click.testing import CliRunner

import streamscan
from streamscan.cli import main
from streamscan.layout import tower, type_key
from streamscan.planning.experts import group_function
from streamscan.records import ExpertRow

NAMES = {  # checkpoint names of the towers, as transformers saves them (original format)
    "language_model.model.layers.3.mlp.up_proj": "language",  # Gemma-3, LLaVA, Mistral-3, Llama-4
    "model.layers.3.mlp.up_proj": "language",  # Qwen2.5-VL's text model
    "model.language_model.layers.3.mlp.up_proj": "language",  # transformers 5 names
    "multi_modal_projector.linear_1": "language",  # between the towers: ranked with the text model
    "multi_modal_projector.mm_input_projection_weight": "language",
    "lm_head": "language",
    "vision_tower.vision_model.encoder.layers.3.mlp.fc1": "vision",  # Gemma-3, LLaVA (SigLIP/CLIP)
    "vision_tower.transformer.layers.3.feed_forward.up_proj": "vision",  # Mistral-3 (Pixtral)
    "vision_model.model.layers.3.mlp.fc1": "vision",  # Llama-4
    "visual.blocks.3.mlp.up_proj": "vision",  # Qwen2.5-VL
    "model.visual.blocks.3.mlp.up_proj": "vision",
    "audio_tower.layers.3.fc1": "audio",
    "model.layers.3.vision_gate": "language",  # a word after the layer index says nothing about the tower
}


@pytest.mark.parametrize("name", list(NAMES))
def test_tower_of_a_name(name):
    assert tower(name) == NAMES[name]


def test_groups_add_the_tower_and_keep_the_moe_grouping():
    names = ["model.layers.0.mlp.up_proj", "visual.blocks.0.mlp.up_proj"]
    group = group_function("reference", [], names)
    assert group("visual.blocks.0.mlp.up_proj", "mlp.up_proj") == "vision tower: mlp.up_proj"
    assert group("model.layers.0.mlp.up_proj", "mlp.up_proj") == "mlp.up_proj"  # the text tower: as before
    assert group_function("reference", [], ["model.layers.0.mlp.up_proj"]) is None  # text-only: the reference's
    rows = [ExpertRow("language_model.model.layers.1.mlp.experts.3.up_proj", 1, 3, "up", "t", "expert")]
    pooled = group_function("pooled", rows, ["vision_model.model.layers.0.mlp.fc1", rows[0].name])
    assert pooled(rows[0].name, "mlp.experts.3.up_proj") == "mlp.experts.*.up_proj"
    assert pooled("vision_model.model.layers.0.mlp.fc1", "mlp.fc1") == "vision tower: mlp.fc1"


@pytest.fixture(scope="module")
def qwen25vl(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("vl")
    text = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128, model_type="qwen2_5_vl_text",
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})  # fmt: skip
    vision = dict(depth=4, hidden_size=32, intermediate_size=40, num_heads=4, out_hidden_size=32,
                  fullatt_block_indexes=[1], window_size=28, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    cfg = transformers.AutoConfig.for_model("qwen2_5_vl", text_config=text, vision_config=vision)
    torch.manual_seed(0)
    transformers.AutoModelForImageTextToText.from_config(cfg).save_pretrained(root / "m")
    scan = streamscan.scan(root / "m", root / "scan", devices="cpu", cpu_workers=1, spectra=False, top_percent=[50])
    return root, scan


def _lines(path):
    return [line[2:] for line in path.read_text().splitlines() if line.startswith("- ")]


def test_vision_and_text_towers_rank_apart(qwen25vl):
    root, scan = qwen25vl
    data = json.loads((root / "scan" / "snr_results_m.json").read_text())
    assert data["visual.blocks.0.mlp.up_proj"]["type"] == data["model.layers.0.mlp.up_proj"]["type"] == "mlp.up_proj"
    text = (root / "scan" / "snr_results_m_unfrozenparameters_50percent.yaml").read_text()
    assert "# vision tower: mlp.up_proj layers" in text and "# mlp.up_proj layers" in text
    lines = _lines(root / "scan" / "snr_results_m_unfrozenparameters_50percent.yaml")
    for tower_ in ("layers.", "visual.blocks."):  # int(4 * 50 / 100) = 2 of each tower's 4 up_proj (any names)
        assert sum(tower_ in n and "mlp.up_proj" in n for n in lines) == 2
    assert type_key("visual.blocks.0.mlp.up_proj") == "mlp.up_proj"


def test_select_only_the_language_tower(qwen25vl, tmp_path):
    root, _ = qwen25vl
    res = CliRunner().invoke(main, ["select", "--out", str(root / "scan"), "-p", "50", "--tower", "language",
                                    "--dest", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = _lines(tmp_path / "snr_results_m_unfrozenparameters_50percent.yaml")
    assert lines and not any("visual" in n for n in lines)
    assert "^lm_head.weight$" in lines and sum("mlp.up_proj" in n for n in lines) == 2
    vision = streamscan.select(root / "scan", 50, dest=tmp_path / "v", tower="vision")
    assert all("visual" in n for n in _lines(vision)) and _lines(vision)


def test_scan_only_the_language_tower(qwen25vl, tmp_path):
    root, full = qwen25vl
    res = CliRunner().invoke(main, ["run", str(root / "m"), "--out", str(tmp_path / "lang"), "--devices", "cpu",
                                    "--workers", "1", "--no-spectra", "--tower", "language", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "lang" / "streamscan_summary.json").read_text())
    skipped = {n: why for n, why in summary["skipped_tensors"].items() if "tower" in why}
    assert skipped and all(n.startswith("visual.") and why == "vision tower: not scanned (--tower language)"
                           for n, why in skipped.items())  # fmt: skip
    data = json.loads((tmp_path / "lang" / "snr_results_m.json").read_text())
    assert set(data) == {r.name for r in full.results if not r.name.startswith("visual.")}
    assert all(data[n]["snr"] == pytest.approx(r.snr) for r in full.results if (n := r.name) in data and r.snr < 1e308)
