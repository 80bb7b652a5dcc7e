"""Deterministic synthetic checkpoints in real layouts, for the demo, the tests and the benchmarks.

Each matrix is Gaussian noise plus a planted low-rank signal whose strength varies with the layer, so
SNRs differ from layer to layer like in trained models. Shards are written one at a time, so writing a
checkpoint larger than memory is fine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


@dataclass(frozen=True)
class LlamaShape:
    layers: int = 2
    hidden: int = 64
    ffn: int = 176
    kv: int = 16
    vocab: int = 256
    tied: bool = False


def planted_matrix(rows: int, cols: int, gen: torch.Generator, rank: int, strength: float) -> torch.Tensor:
    """Noise with entries of std 1/sqrt(cols) plus `rank` directions of singular value ~ strength x bulk edge."""
    noise = torch.randn(rows, cols, generator=gen) / cols**0.5
    if rank == 0:
        return noise
    edge = 1 + (min(rows, cols) / max(rows, cols)) ** 0.5
    u = torch.linalg.qr(torch.randn(rows, rank, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(cols, rank, generator=gen)).Q
    s = edge * strength * torch.linspace(1.0, 0.5, rank) * (max(rows, cols) / cols) ** 0.5
    return noise + (u * s) @ v.T


def llama_tensors(shape: LlamaShape, layer: int, seed: int) -> dict[str, tuple[int, ...] | torch.Tensor]:
    """One decoder layer's tensors, Llama names, [out, in] shapes."""
    gen = torch.Generator().manual_seed(seed * 1000 + layer)
    h, f, kv = shape.hidden, shape.ffn, shape.kv
    p = f"model.layers.{layer}."
    mats = {
        "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f),
    }
    out: dict = {}
    for i, (name, (rows, cols)) in enumerate(mats.items()):
        strength = 1.5 + ((layer * 7 + i * 3) % 11) / 2  # varies per layer and type
        rank = 1 + (layer + i) % 4
        out[p + name + ".weight"] = planted_matrix(rows, cols, gen, rank, strength)
    out[p + "input_layernorm.weight"] = torch.ones(h)
    out[p + "post_attention_layernorm.weight"] = torch.ones(h)
    return out


def write_llama(path: str | Path, shape: LlamaShape = LlamaShape(), dtype: str = "bf16", seed: int = 0,
                layers_per_shard: int | None = None) -> Path:
    """Write a Llama-layout checkpoint: config.json plus model.safetensors or index + shards."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cast = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed)
    head = {"model.embed_tokens.weight": planted_matrix(shape.vocab, shape.hidden, gen, 4, 3.0),
            "model.norm.weight": torch.ones(shape.hidden)}
    if not shape.tied:
        head["lm_head.weight"] = planted_matrix(shape.vocab, shape.hidden, gen, 4, 2.5)
    per = layers_per_shard or shape.layers
    groups = [list(range(i, min(i + per, shape.layers))) for i in range(0, shape.layers, per)]
    nshards = len(groups)
    weight_map: dict[str, str] = {}
    total = 0
    for k, layers in enumerate(groups):
        tensors: dict = dict(head) if k == nshards - 1 else {}
        for layer in layers:
            tensors.update(llama_tensors(shape, layer, seed))
        tensors = {n: t.to(cast).contiguous() for n, t in tensors.items()}
        fname = "model.safetensors" if nshards == 1 else f"model-{k + 1:05d}-of-{nshards:05d}.safetensors"
        save_file(tensors, str(root / fname), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({n: fname for n in tensors})
        del tensors
    if nshards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape.hidden,
              "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers, "vocab_size": shape.vocab,
              "num_key_value_heads": max(1, shape.kv // 8), "num_attention_heads": max(1, shape.hidden // 8),
              "tie_word_embeddings": shape.tied, "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root
