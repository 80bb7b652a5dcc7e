"""gguf: llama.cpp's GGUF files, indexed without reading tensor data and read one tensor at a time.

The header is parsed by the ``gguf`` package (llama.cpp's own reader, an optional dependency:
``pip install 'streamscan[gguf]'``); tensor names are mapped to Hugging Face module names
(``blk.3.ffn_down`` -> ``model.layers.3.mlp.down_proj``) so types and outputs match a safetensors scan of
the same model; its metadata stands in for config.json. A tensor's ``dtype`` is its GGML type name
(``Q4_K``, ``F16``, ...) and its byte range is its data; reading ``pread``s only those bytes and
dequantizes them with ``gguf.quants`` (dequant.py). GGUF shapes are stored fastest-axis first (``ne``):
the matrix is ``reversed(ne)`` = [out, in], as in Hugging Face checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
from pathlib import Path

import torch

from streamscan.checkpoint.dequant import gguf_matrix, gguf_supported
from streamscan.checkpoint.formats.gguf_header import ArrayLength, read_gguf_header
from streamscan.errors import CheckpointError, SourceError
from streamscan.records import Part, ShardInfo, TensorInfo

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
INSTALL_GGUF = "reading GGUF files needs the gguf package: pip install 'streamscan[gguf]'"

# llama.cpp tensor names -> Hugging Face module names (the llama.cpp converter's map, inverted).
GGUF_TOP = {"token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm"}
GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "ffn_post_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight|\.bias)?$")
_TOP_NAME = re.compile(r"^([a-z_]+?)(\.weight|\.bias)?$")


def hf_name(gguf_name: str) -> str:
    """`blk.3.ffn_down.weight` -> `model.layers.3.mlp.down_proj.weight`; unknown names stay as they are.
    Stacked experts (`blk.3.ffn_down_exps.weight`, [E, out, in]) become transformers' fused expert tensors
    (`model.layers.3.mlp.experts.down_proj`, no `.weight`), which planning/experts.py splits one expert at a time."""
    m = _BLOCK_NAME.match(gguf_name)
    if m and m.group(2) in GGUF_BLOCK:
        suffix = "" if m.group(2).endswith("_exps") and m.group(3) == ".weight" else (m.group(3) or "")
        return f"model.layers.{m.group(1)}.{GGUF_BLOCK[m.group(2)]}{suffix}"
    m = _TOP_NAME.match(gguf_name)
    if m and m.group(1) in GGUF_TOP:
        return GGUF_TOP[m.group(1)] + (m.group(2) or "")
    return gguf_name


def _gguf():
    try:
        import gguf
    except ImportError:
        raise SourceError(INSTALL_GGUF) from None
    return gguf


@functools.lru_cache(maxsize=8)
def _gguf_header(path: str, size: int, mtime: int) -> tuple[tuple[TensorInfo, ...], str, dict]:
    """(tensors, sha256 of the header bytes, metadata as config.json keys), cached per file version."""
    gguf = _gguf()
    fields, found, data_offset = read_gguf_header(path)
    tensors, seen = [], {}
    for t in found:
        try:
            qtype = gguf.GGMLQuantizationType(t.ggml_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise CheckpointError(
                f"{path}: tensor {t.name!r} has unknown GGML type {t.ggml_type}; re-download it"
            ) from None
        shape = tuple(int(d) for d in reversed(t.dims))
        name = hf_name(t.name)
        if name in seen:  # an architecture whose llama.cpp names map onto one HF name: keep the file's name
            log.warning("%s: %s and %s both map to %s; keeping the llama.cpp name", path, t.name, seen[name], name)
            name = t.name
        seen[name] = t.name
        start = data_offset + t.offset
        end = start + math.prod(t.dims) * type_size // block
        if end > size:
            raise CheckpointError(f"{path}: tensor {t.name!r} lies outside the file (truncated?); re-download it")
        tensors.append(TensorInfo(name, Path(path), qtype.name, shape, start, end, key=t.name))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        left = data_offset
        while left > 0 and (chunk := fh.read(min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    return tuple(tensors), digest.hexdigest(), _gguf_config(fields)


def _gguf_config(fields: dict) -> dict:
    """The GGUF metadata a scan needs, under config.json's keys (model_type = the llama.cpp architecture)."""
    arch = fields.get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    keys = {
        "hidden_size": "embedding_length",
        "intermediate_size": "feed_forward_length",
        "num_hidden_layers": "block_count",
        "num_attention_heads": "attention.head_count",
        "num_key_value_heads": "attention.head_count_kv",
        "vocab_size": "vocab_size",
        "num_experts": "expert_count",
        "moe_intermediate_size": "expert_feed_forward_length",
    }
    config: dict = {"model_type": arch}
    for hf_key, gguf_key in keys.items():
        value = fields.get(f"{arch}.{gguf_key}")
        if isinstance(value, int):
            config[hf_key] = value
    if "vocab_size" not in config:
        tokens = fields.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayLength):  # its length, never its strings
            config["vocab_size"] = len(tokens)
    return config


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def gguf_config(path: Path) -> dict:
    """A GGUF file's metadata as config.json keys (hidden_size, num_hidden_layers, vocab_size, ...)."""
    return dict(_gguf_header(*_stat_key(path))[2])


def read_tensor(info: TensorInfo, part: Part | None = None) -> torch.Tensor:
    import numpy as np

    start, nbytes, shape = info.start, info.nbytes, info.shape
    if part is not None:
        if part.index is None or len(shape) != 3 or nbytes % shape[0]:
            raise CheckpointError(
                f"{info.shard}: {info.stored_name!r}: GGUF slices are read per expert of a 3-D tensor"
            )
        nbytes //= shape[0]
        start += part.index * nbytes
        shape = shape[1:]
    try:
        with open(info.shard, "rb") as fh:
            raw = os.pread(fh.fileno(), nbytes, start)
    except OSError as err:
        raise CheckpointError(f"{info.shard}: cannot read {info.stored_name!r} ({err}); re-download it") from None
    if len(raw) != nbytes:
        raise CheckpointError(f"{info.shard}: {info.stored_name!r} is truncated; re-download it")
    try:
        matrix = gguf_matrix(np.frombuffer(raw, dtype=np.uint8), info.dtype, shape)
    except NotImplementedError as err:
        raise CheckpointError(
            f"{info.shard}: {info.stored_name!r}: {err}; upgrade gguf (pip install -U gguf)"
        ) from None
    if part is None:
        return matrix
    return matrix[slice(*part.rows), slice(*part.cols)].clone(memory_format=torch.contiguous_format)


def gguf_skip_reason(info: TensorInfo) -> str | None:
    """Why a GGUF tensor cannot be dequantized here, or None."""
    if info.dtype in ("F32", "F16", "BF16") or gguf_supported(info.dtype):
        return None
    if info.dtype in {"I8", "I16", "I32", "I64"}:
        return f"dtype {info.dtype} is not a float weight"
    return f"GGML type {info.dtype}: gguf.quants cannot dequantize it (upgrade gguf or requantize)"


def read_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Index a GGUF file: names (mapped to Hugging Face names), GGML types, shapes; no tensor data."""
    tensors, digest, _ = _gguf_header(*_stat_key(path))
    return list(tensors), ShardInfo(path, path.stat().st_size, digest)
