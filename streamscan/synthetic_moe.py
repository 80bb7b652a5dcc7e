"""Deterministic synthetic Mixture-of-Experts checkpoints in each real layout, with planted per-expert SNRs.

Every expert matrix is a planted low-rank-plus-noise matrix times 2^-k. The reference SNR divides by the
largest singular value, so scaling a matrix by c divides its SNR by exactly c (and a power of two is exact
in bfloat16): expert e of layer l has SNR ~ 2^k(l, e) x (a base SNR that varies by ~10%), so the ranking
of the experts within each layer is known (``expert_exponent``), and differs from layer to layer.

Layouts: ``mixtral``, ``qwen2_moe`` (shared expert + shared_expert_gate), ``deepseek_v3`` (dense first
layer, shared_experts, e_score_correction_bias), ``grok`` (linear/linear_v/linear_1), ``dbrx`` (flattened
[E*ffn, d] experts, no .weight), ``llama4`` (fused [E, H, 2I]), ``v5_fused`` (transformers v5's fused
Mixtral [E, 2I, H]) and ``gpt_oss`` (dequantized bf16, gate/up interleaved along 2I).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .synthetic import DTYPES, planted_matrix

FAMILIES = ("mixtral", "qwen2_moe", "deepseek_v3", "grok", "dbrx", "llama4", "v5_fused", "gpt_oss")
OUTLIER_EXTRA = 4  # the planted outlier expert's SNR is 2^4 times what its rank position gives


@dataclass(frozen=True)
class MoeShape:
    layers: int = 2
    hidden: int = 32
    ffn: int = 24  # one expert's intermediate size
    experts: int = 4
    vocab: int = 64
    heads: int = 4
    dead: tuple[int, int] | None = None  # (layer, expert) whose matrices are all zero
    outlier: tuple[int, int] | None = None  # (layer, expert) with OUTLIER_EXTRA more exponent


def expert_exponent(shape: MoeShape, layer: int, expert: int) -> int:
    """k such that the expert's SNR is ~2^k times the base: a rotation of the experts per layer."""
    k = (expert + layer) % shape.experts
    return k + OUTLIER_EXTRA if shape.outlier == (layer, expert) else k


def expert_matrices(shape: MoeShape, layer: int, expert: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Expert (layer, expert)'s gate [I, H], up [I, H] and down [H, I] as the model applies them ([out, in])."""
    gen = torch.Generator().manual_seed(seed * 100_003 + layer * 1009 + expert)
    H, I = shape.hidden, shape.ffn
    scale = 2.0 ** -expert_exponent(shape, layer, expert)
    out = {"gate": planted_matrix(I, H, gen, 2, 3.0) * scale, "up": planted_matrix(I, H, gen, 3, 3.0) * scale,
           "down": planted_matrix(H, I, gen, 2, 3.0) * scale}
    if shape.dead == (layer, expert):
        out = {p: torch.zeros_like(w) for p, w in out.items()}
    return out


def _dense(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return planted_matrix(rows, cols, gen, 2, 2.5)


def _attention(p: str, s: MoeShape, gen: torch.Generator, names=("q_proj", "k_proj", "v_proj", "o_proj"), attn="self_attn"):
    kv = s.hidden // 2
    shapes = {names[0]: (s.hidden, s.hidden), names[1]: (kv, s.hidden), names[2]: (kv, s.hidden), names[3]: (s.hidden, s.hidden)}
    return {f"{p}{attn}.{n}.weight": _dense(r, c, gen) for n, (r, c) in shapes.items()}


def _per_expert(p: str, s: MoeShape, layer: int, seed: int, names: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for e in range(s.experts):
        w = expert_matrices(s, layer, e, seed)
        out.update({f"{p}{e}.{names[proj]}.weight": w[proj] for proj in ("gate", "up", "down")})
    return out


def _stack(s: MoeShape, layer: int, seed: int, proj: str) -> torch.Tensor:
    return torch.stack([expert_matrices(s, layer, e, seed)[proj] for e in range(s.experts)])


def _layer(family: str, s: MoeShape, layer: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 7 + layer)
    H, I, E = s.hidden, s.ffn, s.experts
    t: dict[str, torch.Tensor] = {}
    if family in ("mixtral", "qwen2_moe", "deepseek_v3", "v5_fused", "gpt_oss"):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = torch.ones(H)
        t[p + "post_attention_layernorm.weight"] = torch.ones(H)
        if family == "deepseek_v3":
            q_rank, kv_rank = H // 2, H // 4
            t.update({p + "self_attn.q_a_proj.weight": _dense(q_rank, H, gen),
                      p + "self_attn.q_b_proj.weight": _dense(H, q_rank, gen),
                      p + "self_attn.kv_a_proj_with_mqa.weight": _dense(kv_rank + 8, H, gen),
                      p + "self_attn.kv_b_proj.weight": _dense(2 * H, kv_rank, gen),
                      p + "self_attn.o_proj.weight": _dense(H, H, gen),
                      p + "self_attn.q_a_layernorm.weight": torch.ones(q_rank),
                      p + "self_attn.kv_a_layernorm.weight": torch.ones(kv_rank)})
        else:
            t.update(_attention(p, s, gen))
        if family == "gpt_oss":
            t[p + "self_attn.sinks"] = torch.zeros(s.heads)
    if family == "mixtral":
        t[p + "block_sparse_moe.gate.weight"] = _dense(E, H, gen)
        t.update(_per_expert(p + "block_sparse_moe.experts.", s, layer, seed, {"gate": "w1", "up": "w3", "down": "w2"}))
    elif family == "qwen2_moe" or (family == "deepseek_v3" and layer > 0):
        t[p + "mlp.gate.weight"] = _dense(E, H, gen)
        names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
        t.update(_per_expert(p + "mlp.experts.", s, layer, seed, names))
        shared = "mlp.shared_expert." if family == "qwen2_moe" else "mlp.shared_experts."
        t.update({p + shared + "gate_proj.weight": _dense(2 * I, H, gen), p + shared + "up_proj.weight": _dense(2 * I, H, gen),
                  p + shared + "down_proj.weight": _dense(H, 2 * I, gen)})
        if family == "qwen2_moe":
            t[p + "mlp.shared_expert_gate.weight"] = _dense(1, H, gen)
        else:
            t[p + "mlp.gate.e_score_correction_bias"] = torch.zeros(E)
    elif family == "deepseek_v3":  # first_k_dense_replace = 1: layer 0 is a dense MLP
        t.update({p + "mlp.gate_proj.weight": _dense(4 * I, H, gen), p + "mlp.up_proj.weight": _dense(4 * I, H, gen),
                  p + "mlp.down_proj.weight": _dense(H, 4 * I, gen)})
    elif family == "grok":
        p = f"model.layers.{layer}."
        t.update(_attention(p, s, gen, attn="attn"))
        t[p + "moe_block.gate.weight"] = _dense(E, H, gen)
        t.update(_per_expert(p + "moe_block.experts.", s, layer, seed, {"gate": "linear", "up": "linear_v", "down": "linear_1"}))
        for norm in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
            t[p + norm + ".weight"] = torch.ones(H)
    elif family == "dbrx":
        p = f"transformer.blocks.{layer}."
        t[p + "norm_attn_norm.attn.Wqkv.weight"] = _dense(2 * H, H, gen)
        t[p + "norm_attn_norm.attn.out_proj.weight"] = _dense(H, H, gen)
        t[p + "norm_attn_norm.norm_1.weight"] = torch.ones(H)
        t[p + "norm_attn_norm.norm_2.weight"] = torch.ones(H)
        t[p + "ffn.router.layer.weight"] = _dense(E, H, gen)
        t[p + "ffn.experts.mlp.w1"] = _stack(s, layer, seed, "gate").reshape(E * I, H)
        t[p + "ffn.experts.mlp.v1"] = _stack(s, layer, seed, "up").reshape(E * I, H)
        t[p + "ffn.experts.mlp.w2"] = _stack(s, layer, seed, "down").transpose(1, 2).reshape(E * I, H)
    elif family == "llama4":
        p = f"language_model.model.layers.{layer}."
        t.update(_attention(p, s, gen))
        t[p + "input_layernorm.weight"] = torch.ones(H)
        t[p + "feed_forward.router.weight"] = _dense(E, H, gen)
        gate, up = _stack(s, layer, seed, "gate"), _stack(s, layer, seed, "up")
        t[p + "feed_forward.experts.gate_up_proj"] = torch.cat([gate, up], 1).transpose(1, 2)  # [E, H, 2I]
        t[p + "feed_forward.experts.down_proj"] = _stack(s, layer, seed, "down").transpose(1, 2)  # [E, I, H]
        for proj, (r, c) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
            t[p + f"feed_forward.shared_expert.{proj}.weight"] = _dense(r, c, gen)
    elif family == "v5_fused":
        t[p + "mlp.gate.weight"] = _dense(E, H, gen)
        t[p + "mlp.experts.gate_up_proj"] = torch.cat([_stack(s, layer, seed, "gate"), _stack(s, layer, seed, "up")], 1)
        t[p + "mlp.experts.down_proj"] = _stack(s, layer, seed, "down")  # [E, H, I]
    elif family == "gpt_oss":
        t[p + "mlp.router.weight"] = _dense(E, H, gen)
        t[p + "mlp.router.bias"] = torch.zeros(E)
        gate_up = torch.empty(E, H, 2 * I)
        gate_up[..., 0::2] = _stack(s, layer, seed, "gate").transpose(1, 2)
        gate_up[..., 1::2] = _stack(s, layer, seed, "up").transpose(1, 2)
        t[p + "mlp.experts.gate_up_proj"] = gate_up
        t[p + "mlp.experts.gate_up_proj_bias"] = torch.zeros(E, 2 * I)
        t[p + "mlp.experts.down_proj"] = _stack(s, layer, seed, "down").transpose(1, 2)  # [E, I, H]
        t[p + "mlp.experts.down_proj_bias"] = torch.zeros(E, H)
    return t


def moe_config(family: str, s: MoeShape) -> dict:
    """A tiny config.json with the real field names of each family."""
    H, I, E, L, V = s.hidden, s.ffn, s.experts, s.layers, s.vocab
    common = {"hidden_size": H, "num_hidden_layers": L, "vocab_size": V, "num_attention_heads": s.heads,
              "torch_dtype": "bfloat16"}
    if family in ("mixtral", "v5_fused"):
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **common, "intermediate_size": I,
                "num_local_experts": E, "num_experts_per_tok": 2, "num_key_value_heads": 2,
                **({"transformers_version": "5.0.0"} if family == "v5_fused" else {})}
    if family == "qwen2_moe":
        return {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", **common,
                "intermediate_size": 4 * I, "moe_intermediate_size": I, "shared_expert_intermediate_size": 2 * I,
                "num_experts": E, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "norm_topk_prob": False}
    if family == "deepseek_v3":
        return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **common,
                "intermediate_size": 4 * I, "moe_intermediate_size": I, "n_routed_experts": E, "n_shared_experts": 2,
                "num_experts_per_tok": 2, "first_k_dense_replace": 1, "q_lora_rank": H // 2, "kv_lora_rank": H // 4,
                "qk_rope_head_dim": 8, "topk_method": "noaux_tc", "quantization_config": None}
    if family == "grok":
        return {"architectures": ["Grok1ModelForCausalLM"], "model_type": "grok-1", **common,
                "intermediate_size": I, "num_experts": E, "num_experts_per_tok": 2}
    if family == "dbrx":
        return {"architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": H, "n_layers": L,
                "n_heads": s.heads, "vocab_size": V, "max_seq_len": 128,
                "attn_config": {"kv_n_heads": 2, "clip_qkv": 8, "rope_theta": 500000},
                "ffn_config": {"ffn_hidden_size": I, "moe_num_experts": E, "moe_top_k": 2}, "torch_dtype": "bfloat16"}
    if family == "llama4":
        return {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
                "text_config": {"model_type": "llama4_text", **common, "intermediate_size": I,
                                "intermediate_size_mlp": 2 * I, "num_local_experts": E, "num_experts_per_tok": 1,
                                "interleave_moe_layer_step": 1},
                "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 16, "intermediate_size": 32}}
    if family == "gpt_oss":
        return {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", **common, "intermediate_size": I,
                "num_local_experts": E, "experts_per_token": 2, "head_dim": H // s.heads}
    raise ValueError(f"unknown MoE family {family!r}; choose one of {', '.join(FAMILIES)}")


def write_moe(path: str | Path, family: str, shape: MoeShape = MoeShape(), dtype: str = "bf16", seed: int = 0) -> Path:
    """Write a checkpoint of FAMILY's layout: config.json plus model.safetensors."""
    config = moe_config(family, shape)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    H, V = shape.hidden, shape.vocab
    if family == "dbrx":
        tensors = {"transformer.wte.weight": _dense(V, H, gen), "transformer.norm_f.weight": torch.ones(H),
                   "lm_head.weight": _dense(V, H, gen)}
    elif family == "llama4":
        tensors = {"language_model.model.embed_tokens.weight": _dense(V, H, gen),
                   "language_model.model.norm.weight": torch.ones(H), "language_model.lm_head.weight": _dense(V, H, gen),
                   "vision_model.model.layers.0.mlp.fc1.weight": _dense(32, 16, gen),
                   "multi_modal_projector.linear_1.weight": _dense(H, 16, gen)}
    else:
        tensors = {"model.embed_tokens.weight": _dense(V, H, gen), "model.norm.weight": torch.ones(H),
                   "lm_head.weight": _dense(V, H, gen)}
    for layer in range(shape.layers):
        tensors.update(_layer(family, shape, layer, seed))
    cast = DTYPES[dtype]
    save_file({n: t.to(cast).contiguous() for n, t in tensors.items()}, str(root / "model.safetensors"),
              metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root
