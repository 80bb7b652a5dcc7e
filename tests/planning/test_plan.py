import torch

import streamscan
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.layout import (
    embedding_role,
    layer_index,
    module_name,
    natural_key,
    type_key,
)
from streamscan.planning.plan import make_plan
from tests.conftest import write_tensors


def test_type_key_is_the_name_after_the_first_all_digit_component():
    assert type_key("model.layers.3.mlp.down_proj") == "mlp.down_proj"
    assert type_key("model.layers.3.block_sparse_moe.experts.7.w1") == "block_sparse_moe.experts.7.w1"
    assert type_key("lm_head") == "lm_head"
    assert type_key("model.layers2.x") == "model.layers2.x"  # 'layers2' is not all digits
    assert module_name("a.b.weight") == "a.b" and module_name("a.b.bias") == "a.b.bias"
    assert layer_index("transformer.h.11.attn") == 11
    assert sorted(["l.10.a", "l.2.a"], key=natural_key) == ["l.2.a", "l.10.a"]


def test_embedding_and_head_roles_use_real_names_and_vocab():
    cfg = {"vocab_size": 100}
    assert embedding_role("transformer.wte.weight", (100, 16), cfg) == "embedding"
    assert embedding_role("lm_head.weight", (100, 16), cfg) == "head"
    assert embedding_role("embeddings.position_embeddings.weight", (512, 16), cfg) is None
    assert embedding_role("model.layers.0.embed_tokens.weight", (100, 16), cfg) is None


def test_plan_targets_skips_and_largest_first(sharded_llama):
    plan = make_plan(build_index(resolve(sharded_llama)))
    names = [j.name for j in plan.jobs]
    assert len(names) == 4 * 7 + 2 and "lm_head" in names
    skipped = {s.name: s.reason for s in plan.skipped}
    assert "1-D" in skipped["model.layers.0.input_layernorm"] and "model.norm" in skipped
    costs = [j.cost for j in plan.jobs]
    assert costs == sorted(costs, reverse=True)
    roles = {j.name: j.role for j in plan.jobs if j.role}
    assert roles == {"lm_head": "head", "model.embed_tokens": "embedding"}


def test_include_exclude_and_done(sharded_llama):
    idx = build_index(resolve(sharded_llama))
    plan = make_plan(idx, include=("*mlp*",), exclude=("*down_proj",))
    assert {j.type for j in plan.jobs} == {"mlp.gate_proj", "mlp.up_proj"}
    done = frozenset({"model.layers.0.mlp.up_proj", "not.a.target"})
    plan = make_plan(idx, include=("*mlp*",), done=done)
    assert plan.done == {"model.layers.0.mlp.up_proj"} and len(plan.jobs) == 11 and plan.total == 12


def test_non_weight_and_integer_2d_tensors_are_skipped_with_reason(tmp_path):
    path = write_tensors(
        tmp_path / "m" / "model.safetensors",
        {
            "x.weight": torch.randn(4, 4),
            "x.weight_scale": torch.randn(4, 4),
            "y.weight": torch.zeros(4, 4, dtype=torch.int8),
            "z.weight": torch.randn(2, 3, 4),
        },
    )
    plan = make_plan(build_index(resolve(path)))
    assert [j.name for j in plan.jobs] == ["x"]
    reasons = {s.name: s.reason for s in plan.skipped}
    assert "not named *.weight" in reasons["x.weight_scale"]
    assert "I8" in reasons["y"] and "3-D" in reasons["z"]


def test_2d_weights_not_named_dot_weight_and_1xh_gates_are_scored(tmp_path):
    """Gemma-3's multimodal projector and a pooling head's fused attention input are 2-D weights named
    ``*_weight``; Qwen-MoE's shared_expert_gate is 1 x H: the reference scores all three."""
    path = write_tensors(
        tmp_path / "m" / "model.safetensors",
        {
            "multi_modal_projector.mm_input_projection_weight": torch.randn(8, 6),
            "vision_tower.vision_model.head.attention.in_proj_weight": torch.randn(12, 4),
            "model.layers.0.mlp.shared_expert_gate.weight": torch.randn(1, 8),
            "model.layers.0.self_attn.A_log": torch.randn(4, 4),  # a 2-D parameter that is no weight matrix
        },
    )
    plan = make_plan(build_index(resolve(path)))
    jobs = {j.name: j.type for j in plan.jobs}
    assert jobs == {
        "multi_modal_projector.mm_input_projection_weight": "multi_modal_projector.mm_input_projection_weight",
        "vision_tower.vision_model.head.attention.in_proj_weight": "vision_tower.vision_model.head.attention.in_proj_weight",
        "model.layers.0.mlp.shared_expert_gate": "mlp.shared_expert_gate",
    }
    assert [s.name for s in plan.skipped] == ["model.layers.0.self_attn.A_log"]
    scan = streamscan.scan(tmp_path / "m", tmp_path / "out", devices="cpu", cpu_workers=1, spectra=False)
    gate = next(r for r in scan.results if r.name == "model.layers.0.mlp.shared_expert_gate")
    assert (gate.snr, gate.degenerate, gate.n_signal) == (float("inf"), "noise-sum-0", 1)  # the reference's Infinity
    assert scan.summary.no_snr == 0 and scan.summary.failed == 0
