"""Expert layouts split per expert, checked against the modeling code of transformers itself: tiny random
models built by ``AutoModelForCausalLM.from_config`` and saved by ``save_pretrained`` (both layouts where
transformers has two), scanned, and every expert's SNR compared with float64 ``svdvals`` of the slice the
model's forward uses (GraniteMoE, JetMoE MLP and attention experts, LongCat-Flash with zero experts)."""

import math
import re

import pytest
import torch

import streamscan

transformers = pytest.importorskip("transformers")

H, I = 32, 24  # hidden != 2 x intermediate: no layout is ambiguous
GRANITE = dict(
    hidden_size=H, intermediate_size=I, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=128, num_local_experts=4, num_experts_per_tok=2,
)  # fmt: skip
JETMOE = dict(
    hidden_size=H, intermediate_size=I, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8,
    vocab_size=128, num_local_experts=4, num_experts_per_tok=2,
)  # fmt: skip
LONGCAT = dict(
    hidden_size=H, num_layers=2, num_attention_heads=4, vocab_size=128, ffn_hidden_size=40, n_routed_experts=4,
    zero_expert_num=2, expert_ffn_hidden_size=8, num_experts_per_tok=2, kv_lora_rank=8, q_lora_rank=16,
    qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4,
)  # fmt: skip
MODELS = {
    "granitemoe": ("granitemoe", GRANITE, True),
    "granitemoe-fused": ("granitemoe", GRANITE, False),
    "jetmoe": ("jetmoe", JETMOE, True),
    "longcat": ("longcat_flash", LONGCAT, True),
    "longcat-fused": ("longcat_flash", LONGCAT, False),
}


def snr64(W: torch.Tensor) -> float:
    """The reference formula on float64 svdvals, written out here (inf where the noise sum is 0)."""
    S = torch.linalg.svdvals(W.double())
    m, n = W.shape
    q = torch.quantile(S, torch.tensor([0.25, 0.75], dtype=torch.float64))
    threshold = (q[1] - q[0]) / 1.349 * (1 + math.sqrt(min(m, n) / max(m, n)))
    noise = float(S[S <= threshold].sum())
    return math.inf if noise == 0 else float(S[S > threshold].sum()) / noise / float(S[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for key, (model_type, kw, original) in MODELS.items():
        torch.manual_seed(0)
        cfg = transformers.AutoConfig.for_model(model_type, **kw)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.save_pretrained(root / key, save_original_format=original)
        scan = streamscan.scan(root / key, root / f"{key}-scan", devices="cpu", cpu_workers=1, spectra=False)
        out[key] = (model, scan)
    return out


def _slice(model, name: str) -> torch.Tensor | None:
    """The matrix the modeling code multiplies by, for a scanned expert slice NAME (None: not an expert slice)."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\[(\d+)\](?:\.(gate|up))?", name)
    if m is None:
        return None
    layer, module, e, half = int(m[1]), m[2], int(m[3]), m[4]
    lay = model.model.layers[layer]
    if module in ("block_sparse_moe.input_linear", "block_sparse_moe.experts.gate_up_proj"):
        W = lay.block_sparse_moe.experts.gate_up_proj[e]  # forward: linear(x, W).chunk(2, dim=-1) = gate, up
    elif module in ("block_sparse_moe.output_linear", "block_sparse_moe.experts.down_proj"):
        W = lay.block_sparse_moe.experts.down_proj[e]
    elif module == "mlp.input_linear":
        W = lay.mlp.input_linear.weight[e]  # JetMoE: chunk(2, dim=-1): activation(first) * second
    elif module == "mlp.output_linear":
        W = lay.mlp.output_linear.weight[e]
    elif module == "self_attention.experts.input_linear":
        W = lay.self_attention.experts.input_linear.weight[e]  # the query projection of attention expert e
    elif module == "self_attention.experts.output_linear":
        W = lay.self_attention.experts.output_linear.weight[e]
    elif module == "mlp.experts.gate_up_proj":
        W = lay.mlp.experts.gate_up_proj[e]  # LongCat: used for e < n_routed_experts only
    elif module == "mlp.experts.down_proj":
        W = lay.mlp.experts.down_proj[e]
    else:
        raise AssertionError(f"unexpected slice {name}")
    rows = W.shape[0] // 2
    W = W[:rows] if half == "gate" else W[rows:] if half == "up" else W
    return W.detach()


def _per_expert(model, name: str) -> torch.Tensor | None:
    """LongCat saved in the original layout: mlp.experts.{e}.gate_proj|up_proj|down_proj of the fused tensors."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj", name)
    if m is None:
        return None
    experts = model.model.layers[int(m[1])].mlp.experts
    e, proj = int(m[2]), m[3]
    if proj == "down":
        return experts.down_proj[e].detach()
    W = experts.gate_up_proj[e]
    return (W[: W.shape[0] // 2] if proj == "gate" else W[W.shape[0] // 2 :]).detach()


EXPECTED = {  # (expert matrices scored, zero-expert slots skipped)
    "granitemoe": (2 * 4 * 3, 0),
    "granitemoe-fused": (2 * 4 * 3, 0),
    "jetmoe": (2 * 4 * 3 + 2 * 4 * 2, 0),  # MLP gate/up/down and attention query/output per expert
    "longcat": (2 * 4 * 3, 2 * 2 * 2),  # zero experts 4, 5: gate and up written, never used
    "longcat-fused": (2 * 4 * 3, 2 * 2 * 2),
}


@pytest.mark.parametrize("key", list(MODELS))
def test_every_expert_scores_the_slice_the_model_uses(built, key):
    model, scan = built[key]
    experts = 0
    for r in scan.results:
        W = _slice(model, r.name)
        if W is None:
            W = _per_expert(model, r.name)
        if W is None:
            continue
        experts += 1
        assert tuple(r.shape) in (tuple(W.shape), tuple(W.shape[::-1])), r.name
        expected = snr64(W)
        if expected == math.inf:
            assert r.snr == math.inf and r.degenerate == "noise-sum-0", r.name
        else:
            assert r.snr == pytest.approx(expected, rel=1e-9), r.name
    zero = [n for n, why in scan.summary.skipped_tensors.items() if why.startswith("zero-computation expert")]
    assert (experts, len(zero)) == EXPECTED[key]
    assert scan.summary.failed == 0 and scan.summary.no_snr == 0
    unscored_3d = [n for n, why in scan.summary.skipped_tensors.items() if why.startswith("3-D")]
    assert unscored_3d == []  # every expert tensor split


def test_both_granitemoe_layouts_give_the_same_snrs_per_expert(built):
    a = {r.name.replace("input_linear", "experts.gate_up_proj").replace("output_linear", "experts.down_proj"): r.snr
         for r in built["granitemoe"][1].results}  # fmt: skip
    b = {re.sub(r"router$", "router.layer", r.name): r.snr for r in built["granitemoe-fused"][1].results}
    assert a == b


def test_longcat_router_with_zero_expert_rows_is_a_router(built):
    scan = built["longcat"][1]
    header, _ = streamscan.load_results(scan.out_dir)
    routers = [r.name for r in header.experts if r.kind == "router"]
    assert routers == ["model.layers.0.mlp.router.classifier", "model.layers.1.mlp.router.classifier"]
