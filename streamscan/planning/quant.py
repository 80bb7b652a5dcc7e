"""quant: quantized weights and their scale tensors -> one target each (a plan-stage layout pass).

- FP8 block-scaled (DeepSeek-V3, Kimi-K2): ``X.weight`` F8_E4M3/F8_E5M2 [out, in] + ``X.weight_scale_inv``
  F32 [ceil(out/br), ceil(in/bc)], block [br, bc] from ``quantization_config.weight_block_size``
  (default 128 x 128). A ``weight_scale`` of that block shape is read the same way.
- FP8 per-tensor / per-channel: ``X.weight`` F8 + ``X.weight_scale`` (scalar, [out] or [out, 1]);
  ``X.input_scale`` (activations) is consumed, it plays no part in the weight.
- MXFP4 (gpt-oss): ``X_blocks`` U8 [..., G, 16] + ``X_scales`` U8 [..., G] -> ``X`` of shape [..., 32 G].
- GGUF: every GGML type ``gguf.quants`` implements; others are skipped with the reason.
- NVFP4 (ModelOpt: U8 weight + F8_E4M3 ``weight_scale`` + ``weight_scale_2``) is not dequantized yet:
  skipped with the reason, never guessed.

The weight's TensorInfo gains a ``Quant`` naming its scale tensor; the reader dequantizes the pair.
Scale tensors are *consumed*: not scored, not skipped noise, listed apart with what they scale.
"""

from __future__ import annotations

import math
from dataclasses import replace

from streamscan.records import Quant, TensorInfo

FP8 = ("F8_E4M3", "F8_E5M2")
DEFAULT_BLOCK = (128, 128)
SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale", ".weight_scale_2", ".input_scale")


def block_size(config: dict) -> tuple[int, int] | None:
    """``quantization_config.weight_block_size`` as (rows, cols), or None when config.json has none."""
    q = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") or {}
    size = q.get("weight_block_size") if isinstance(q, dict) else None
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def pair_quantized(
    tensors: tuple[TensorInfo, ...] | list[TensorInfo], config: dict
) -> tuple[list[TensorInfo], dict[str, str], dict[str, str]]:
    """(tensors to plan, with quantized weights carrying their Quant; {name: skip reason} for quantized
    weights that cannot be dequantized; {name: what it scales} for the scale tensors consumed)."""
    by_name = {t.name: t for t in tensors}
    block = block_size(config)
    out: list[TensorInfo] = []
    skipped: dict[str, str] = {}
    consumed: dict[str, str] = {}
    quantized = {n for n, t in by_name.items() if n.endswith(".weight") and _is_quantized(t, by_name)}
    for t in tensors:
        if t.name.endswith(SCALE_SUFFIXES) and t.name.rsplit(".", 1)[0] + ".weight" in quantized:
            continue  # handled with its weight below
        if t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" in by_name:
            continue
        if (
            t.name.endswith("_blocks")
            and t.dtype == "U8"
            and (scales := by_name.get(t.name[: -len("_blocks")] + "_scales"))
        ):
            out.append(_mxfp4(t, scales, skipped, consumed))
            continue
        if str(t.shard).endswith(".gguf"):  # (a Path's suffix costs more than the rest of the loop)
            from streamscan.checkpoint.formats.gguf import gguf_skip_reason

            reason = gguf_skip_reason(t)
            if reason is not None:
                skipped[t.name] = reason
            out.append(t)
            continue
        if t.name not in quantized:
            out.append(t)
            continue
        module = t.name[: -len(".weight")]
        companions = {s: c for s in SCALE_SUFFIXES if (c := by_name.get(module + s)) is not None}
        if t.dtype in FP8:
            paired = _fp8(t, companions, block, skipped)
            out.append(paired)
            for s in companions.values():
                used = paired.quant is not None and s is paired.quant.scale
                consumed[s.name] = f"{'scale of' if used else 'activation/extra scale of'} {module} (FP8)"
        else:  # NVFP4
            out.append(t)
            skipped[t.name] = (
                "NVFP4 (U8 weight with F8_E4M3 block scales): not dequantized yet; "
                "convert the checkpoint to bf16 to scan it"
            )
            for s in companions.values():
                consumed[s.name] = f"scale of {module} (NVFP4, not scored)"
    return out, skipped, consumed


def _with(t: TensorInfo, quant: Quant) -> TensorInfo:
    """T carrying QUANT (``dataclasses.replace`` costs 10x as much, 70k times for Kimi-K2)."""
    return TensorInfo(t.name, t.shard, t.dtype, t.shape, t.start, t.end, t.key, quant)


def _is_quantized(t: TensorInfo, by_name: dict[str, TensorInfo]) -> bool:
    """An FP8 weight, or a U8 weight with an FP8 ``weight_scale`` (NVFP4): its scale tensors belong to it."""
    if t.dtype in FP8:
        return True
    scale = by_name.get(t.name[: -len(".weight")] + ".weight_scale")
    return t.dtype == "U8" and scale is not None and scale.dtype in FP8


def _fp8(
    t: TensorInfo, companions: dict[str, TensorInfo], block: tuple[int, int] | None, skipped: dict[str, str]
) -> TensorInfo:
    """The FP8 weight with its Quant, or unchanged with a skip reason when its scale does not fit."""
    scale = companions.get(".weight_scale_inv") or companions.get(".weight_scale")
    if scale is None or len(t.shape) != 2:
        if scale is not None:
            skipped[t.name] = f"FP8 weight of shape {list(t.shape)}: only 2-D block/tensor-scaled weights are read"
        return t
    rows, cols = t.shape
    numel = math.prod(scale.shape)
    if scale.dtype not in ("F32", "BF16", "F16"):
        skipped[t.name] = f"FP8 scale {scale.name} has dtype {scale.dtype}; expected F32"
        return t
    blockwise = scale.name.endswith("_scale_inv") or (numel > 1 and scale.shape != (rows, 1))
    if len(scale.shape) == 2 and blockwise:
        br, bc = block or DEFAULT_BLOCK
        if scale.shape != (math.ceil(rows / br), math.ceil(cols / bc)):
            skipped[t.name] = (
                f"FP8 scale {list(scale.shape)} does not tile a {rows}x{cols} weight in {br}x{bc} "
                "blocks; set quantization_config.weight_block_size in config.json"
            )
            return t
        return _with(t, Quant("fp8-block", scale, (br, bc)))
    if numel in (1, rows):
        return _with(t, Quant("fp8-scaled", scale))
    skipped[t.name] = (
        f"FP8 scale {scale.name} of shape {list(scale.shape)} is neither per-tensor, per-channel nor per-block"
    )
    return t


def _mxfp4(blocks: TensorInfo, scales: TensorInfo, skipped: dict[str, str], consumed: dict[str, str]) -> TensorInfo:
    """``X_blocks`` + ``X_scales`` -> one TensorInfo named ``X`` with the dequantized shape."""
    name = blocks.name[: -len("_blocks")]
    consumed[scales.name] = f"MXFP4 scales of {name}"
    logical = replace(
        blocks,
        name=name,
        key=blocks.name,
        dtype="MXFP4",
        shape=(*blocks.shape[:-2], blocks.shape[-2] * 32) if len(blocks.shape) >= 2 else blocks.shape,
        quant=Quant("mxfp4", scales),
    )
    if (
        len(blocks.shape) < 2
        or blocks.shape[-1] != 16
        or scales.dtype != "U8"
        or tuple(scales.shape) != blocks.shape[:-1]
    ):
        skipped[name] = (
            f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} ({scales.dtype}) "
            "do not match ([..., G, 16] and U8 [..., G])"
        )
    return logical
