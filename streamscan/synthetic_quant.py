"""Synthetic quantized checkpoints in the real layouts (for tests and benchmarks): the planted Llama of
synthetic.py quantized to FP8 with 128x128 block scales (DeepSeek-V3 style), to FP8 with per-tensor scales,
written as a GGUF (llama.cpp names, GGML quant types) or as PyTorch ``.bin`` files.

Quantizers here are the straightforward reference ones (absmax per block); they are used only to build
inputs. ``reference_dequantized`` recomputes what a reader must return, independently of dequant.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .synthetic import LlamaShape, llama_tensors, planted_matrix

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def fp8_block_quantize(w: torch.Tensor, block: tuple[int, int] = (128, 128), dtype=torch.float8_e4m3fn
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scale_inv [ceil(m/br), ceil(n/bc)]) with ``w ~ fp8 * scale`` per block."""
    m, n = w.shape
    br, bc = block
    gm, gn = math.ceil(m / br), math.ceil(n / bc)
    scale = torch.empty(gm, gn, dtype=torch.float32)
    q = torch.empty(m, n, dtype=dtype)
    for i in range(gm):
        for j in range(gn):
            tile = w[i * br : (i + 1) * br, j * bc : (j + 1) * bc].float()
            s = float(tile.abs().max()) / FP8_MAX[dtype] or 1.0
            scale[i, j] = s
            q[i * br : (i + 1) * br, j * bc : (j + 1) * bc] = (tile / s).to(dtype)
    return q, scale


def reference_dequantized(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """fp8 * scale, block by block in float64 (an independent check of dequant.fp8_block)."""
    m, n = q.shape
    big = torch.kron(scale.double(), torch.ones(block, dtype=torch.float64))[:m, :n]
    return (q.double() * big).float()


def _llama_state(shape: LlamaShape, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": planted_matrix(shape.vocab, shape.hidden, gen, 4, 3.0),
             "model.norm.weight": torch.ones(shape.hidden)}
    if not shape.tied:
        state["lm_head.weight"] = planted_matrix(shape.vocab, shape.hidden, gen, 4, 2.5)
    for layer in range(shape.layers):
        state.update(llama_tensors(shape, layer, seed))
    return state


def _config(shape: LlamaShape, **extra) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape.hidden,
            "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers, "vocab_size": shape.vocab,
            "num_key_value_heads": max(1, shape.kv // 8), "num_attention_heads": max(1, shape.hidden // 8),
            "tie_word_embeddings": shape.tied, **extra}


def write_fp8_llama(path: str | Path, shape: LlamaShape = LlamaShape(), block: tuple[int, int] | None = (128, 128),
                    seed: int = 0, dtype=torch.float8_e4m3fn) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Llama whose decoder matrices are FP8 with ``weight_scale_inv`` block scales (``block``), or with a
    per-tensor ``weight_scale`` and ``input_scale`` (``block=None``); embeddings, head and norms bf16.
    Returns the directory and the float32 matrices a reader must produce (by module name)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for name, w in _llama_state(shape, seed).items():
        if w.ndim == 2 and ".layers." in name:
            module = name[: -len(".weight")]
            if block is None:
                s = torch.tensor([float(w.abs().max()) / FP8_MAX[dtype]], dtype=torch.float32)
                q = (w / s).to(dtype)
                tensors[name], tensors[module + ".weight_scale"] = q, s
                tensors[module + ".input_scale"] = torch.tensor([1.0], dtype=torch.float32)
                expected[module] = (q.double() * s.double()).float()
            else:
                q, scale = fp8_block_quantize(w, block, dtype)
                tensors[name], tensors[module + ".weight_scale_inv"] = q, scale
                expected[module] = reference_dequantized(q, scale, block)
        else:
            tensors[name] = w.to(torch.bfloat16)
            if w.ndim == 2:
                expected[name[: -len(".weight")]] = tensors[name].float()
    save_file(tensors, str(root / "model.safetensors"))
    quant = {"quant_method": "fp8", "fmt": "e4m3" if dtype == torch.float8_e4m3fn else "e5m2",
             "activation_scheme": "dynamic"}
    if block is not None:
        quant["weight_block_size"] = list(block)
    (root / "config.json").write_text(json.dumps(_config(shape, quantization_config=quant), indent=2))
    return root, expected


GGUF_LEAVES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf: str) -> str:
    """The llama.cpp name of a Llama tensor (what convert_hf_to_gguf writes)."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
           "model.norm.weight": "output_norm.weight"}
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    leaf = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{GGUF_LEAVES[leaf]}.{parts[-1]}"


def write_gguf_llama(path: str | Path, shape: LlamaShape = LlamaShape(ffn=192), qtype: str = "Q8_0",
                     seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A GGUF file of the planted Llama: matrices in GGML type ``qtype``, norms F32 (needs ``gguf``).
    Returns the file and the float32 matrices llama.cpp's dequantizer gives back (by HF module name)."""
    import gguf
    from gguf import quants

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    qt = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(shape.layers)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(max(1, shape.hidden // 8))
    writer.add_head_count_kv(max(1, shape.kv // 8))
    writer.add_vocab_size(shape.vocab)
    expected: dict[str, torch.Tensor] = {}
    for name, w in _llama_state(shape, seed).items():
        x = w.float().numpy()
        if w.ndim == 2:
            q = quants.quantize(x, qt)
            writer.add_tensor(gguf_name(name), q, raw_dtype=qt)
            expected[name[: -len(".weight")]] = torch.from_numpy(quants.dequantize(q, qt).copy())
        else:
            writer.add_tensor(gguf_name(name), x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, expected


def write_bin_llama(path: str | Path, shape: LlamaShape = LlamaShape(), shards: int = 1, seed: int = 0) -> Path:
    """The planted Llama in bf16 as ``pytorch_model.bin`` (or shards with ``pytorch_model.bin.index.json``)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    state = {n: t.to(torch.bfloat16).contiguous() for n, t in _llama_state(shape, seed).items()}
    names = sorted(state)
    if shards == 1:
        torch.save(state, root / "pytorch_model.bin")
    else:
        weight_map = {}
        per = math.ceil(len(names) / shards)
        for k in range(shards):
            fname = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
            part = {n: state[n] for n in names[k * per : (k + 1) * per]}
            torch.save(part, root / fname)
            weight_map.update({n: fname for n in part})
        (root / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(_config(shape), indent=2))
    return root


FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] (K a multiple of 32) -> (blocks U8 [..., K/32, 16], scales U8 [..., K/32]): per 32 values the
    smallest power-of-two scale with |x| / scale <= 6, each value rounded to the nearest E2M1 code."""
    *lead, k = w.shape
    x = w.float().reshape(*lead, k // 32, 32)
    amax = x.abs().amax(-1).clamp_min(2.0**-126)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    scaled = x / torch.exp2(exp).unsqueeze(-1)
    mag = (scaled.abs().unsqueeze(-1) - FP4_GRID).abs().argmin(-1)
    codes = (mag | ((scaled < 0).long() << 3)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exp + 127).to(torch.uint8).contiguous()


def mxfp4_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The MXFP4 decoding written out directly (independent of dequant.mxfp4), in float64 then float32."""
    table = torch.cat([FP4_GRID, -FP4_GRID]).double()
    codes = torch.stack([blocks & 15, blocks >> 4], dim=-1).reshape(*blocks.shape[:-1], 32).long()
    values = table[codes] * torch.exp2(scales.double() - 127).unsqueeze(-1)
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32).float()


def write_mxfp4_gpt_oss(path: str | Path, shape=None, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """gpt-oss as released: experts in MXFP4 (``gate_up_proj_blocks`` [E, 2I, H/32, 16] with gate/up rows
    interleaved, ``down_proj_blocks`` [E, H, I/32, 16], U8 ``*_scales``), the rest bf16; the planted
    experts of synthetic_moe. Returns the directory and each expert slice's dequantized matrix by job name
    (``...gate_up_proj[e].gate`` = rows 0::2 of expert e, ``.up`` = rows 1::2, ``...down_proj[e]``)."""
    from .synthetic_moe import MoeShape, write_moe

    shape = shape or MoeShape(hidden=64, ffn=96)
    root = write_moe(Path(path), "gpt_oss", shape, seed=seed)
    from safetensors.torch import load_file

    tensors = load_file(str(root / "model.safetensors"))
    expected: dict[str, torch.Tensor] = {}
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        stored = tensors.pop(name).float().transpose(1, 2).contiguous()  # [E, out, in] as the MXFP4 release stores it
        blocks, scales = mxfp4_quantize(stored)
        tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
        full = mxfp4_reference(blocks, scales)
        for e in range(full.shape[0]):
            if name.endswith("gate_up_proj"):
                expected[f"{name}[{e}].gate"] = full[e, 0::2].contiguous()
                expected[f"{name}[{e}].up"] = full[e, 1::2].contiguous()
            else:
                expected[f"{name}[{e}]"] = full[e]
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((root / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                                                                        "model.layers.*.mlp.router",
                                                                                        "model.embed_tokens", "lm_head"]}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root, expected
