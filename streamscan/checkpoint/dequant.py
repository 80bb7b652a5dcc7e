"""dequant: quantized weights -> float32 matrices. Pure math, no I/O.

- FP8 block-scaled (DeepSeek-V3, Kimi-K2): ``W = fp8 * scale[i // br, j // bc]`` per (br x bc) block, the
  last row/column blocks cropped to the matrix (e.g. 576 rows = 4.5 blocks of 128).
- FP8 per-tensor or per-channel: ``W = fp8 * scale`` with a scalar, [out] or [out, 1] scale.
- MXFP4 (OCP microscaling, gpt-oss): 32 FP4 E2M1 values per block, two per byte (low nibble first), and
  one E8M0 scale byte per block: ``2 ** (s - 127)`` (255 is NaN).
- GGUF: llama.cpp's own ``gguf.quants.dequantize`` for every quant type it implements.

Each function works in row chunks, so its transient memory stays a small fraction of the float32 output.
"""

from __future__ import annotations

import functools
import math

import torch

CHUNK_ELEMENTS = 1 << 22  # float32 elements converted at a time (16 MiB)
SMALL_ELEMENTS = 1 << 18  # up to here an FP8 matrix (or stack) is dequantized in one pass: its per-element
# scales are a second float32 copy (1 MiB), less than the per-chunk steps cost at these sizes

# FP4 E2M1 code -> value: sign bit 3, exponent bits 2..1, mantissa bit 0.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _row_step(cols: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(cols, 1))


def on_device(scheme: str, weight: torch.Tensor, scale: torch.Tensor, block, device) -> torch.Tensor:
    """A stored quantized weight (reader.read_stored; a block-scaled FP8 one may be a stack) dequantized to float32 on DEVICE: the weight and its
    scales are copied there as stored (1 byte per FP8 value, 0.5 per MXFP4 value) and converted there."""
    weight, scale = weight.to(device, non_blocking=True), scale.to(device, non_blocking=True)
    if scheme == "fp8-block" and weight.ndim == 3:  # a [B, m, n] stack of same-shape weights, [B, R, C] scales
        return fp8_block_stack(weight, scale, block or (128, 128))
    if scheme == "fp8-scaled" and weight.ndim == 3:  # a stack: each member with its own scale
        return torch.stack([fp8_scaled(w, s) for w, s in zip(weight, scale)])
    if scheme == "fp8-block":
        return fp8_block(weight, scale, block or (128, 128))
    if scheme == "fp8-scaled":
        return fp8_scaled(weight, scale)
    if scheme == "mxfp4":
        return mxfp4(weight, scale)
    raise ValueError(f"unknown quantization scheme {scheme!r}")


def fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """A 2-D FP8 weight times its block scales (``scale`` [ceil(out/br), ceil(in/bc)]), as float32."""
    if weight.ndim != 2:
        raise ValueError(f"block-scaled FP8 weight must be 2-D, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    br, bc = _tiling(m, n, block, tuple(scale.shape))
    scale = scale.to(device=weight.device, dtype=torch.float32)
    if m * n <= SMALL_ELEMENTS:  # small: the whole matrix at once (the same products, fewer operations)
        return _scaled(weight, scale, br, bc)
    out = torch.empty(m, n, dtype=torch.float32, device=weight.device)
    for b in range(scale.shape[0]):
        rows = slice(b * br, min((b + 1) * br, m))
        per_column = scale[b].repeat_interleave(bc)[:n]  # this block row's scale for every column
        out[rows] = weight[rows].to(torch.float32)
        out[rows] *= per_column
    return out


def fp8_block_stack(weights: torch.Tensor, scales: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """:func:`fp8_block` of each matrix of a [B, m, n] stack with its [B, R, C] scales, bit for bit: small
    stacks in one pass (the same products), others matrix by matrix."""
    if weights.ndim != 3 or scales.ndim != 3 or scales.shape[0] != weights.shape[0]:
        raise ValueError(
            f"FP8 stack {tuple(weights.shape)} and scales {tuple(scales.shape)} are not [B, m, n], [B, R, C]"
        )
    B, m, n = weights.shape
    if B == 0 or B * m * n > 4 * SMALL_ELEMENTS:  # (a batch of tiny matrices: at most 4 MiB of scales)
        return torch.stack([fp8_block(w, s, block) for w, s in zip(weights, scales)])
    br, bc = _tiling(m, n, block, tuple(scales.shape[1:]))
    return _scaled(weights, scales.to(device=weights.device, dtype=torch.float32), br, bc)


def _tiling(m: int, n: int, block: tuple[int, int], scale_shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) block of an m x n FP8 weight, checked against its scale grid SCALE_SHAPE. A block
    larger than the weight covers it whole: same tiling, and a scale is never expanded past the weight (a
    hostile weight_block_size [256, 1.5e9] would otherwise allocate gigabytes)."""
    br, bc = min(block[0], max(m, 1)), min(block[1], max(n, 1))
    expected = (math.ceil(m / br), math.ceil(n / bc))
    if scale_shape != expected:
        raise ValueError(
            f"scale shape {scale_shape} does not fit a {m}x{n} weight in {br}x{bc} blocks (expected {expected})"
        )
    return br, bc


def _scaled(weight: torch.Tensor, scale: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    """WEIGHT ([..., m, n] FP8) times its float32 block scales ([..., R, C]) expanded to every element, in one
    pass: the same products as the row-chunked loop."""
    m, n = weight.shape[-2:]
    per_element = scale.repeat_interleave(br, -2)[..., :m, :].repeat_interleave(bc, -1)[..., :n]
    return weight.to(torch.float32).mul_(per_element)


def fp8_scaled(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """An FP8 weight times a per-tensor (scalar) or per-output-channel ([out] / [out, 1]) scale, as float32."""
    m = weight.shape[0]
    scale = scale.to(device=weight.device, dtype=torch.float32)
    if scale.numel() == 1:
        scale = scale.reshape(1, 1)
    elif scale.numel() == m and scale.ndim <= 2 and (scale.ndim == 1 or scale.shape[1] == 1):
        scale = scale.reshape(m, 1)
    else:
        raise ValueError(
            f"scale shape {tuple(scale.shape)} is neither per-tensor nor per-channel for weight {tuple(weight.shape)}"
        )
    out = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    step = _row_step(weight[0].numel())
    for r in range(0, m, step):
        s = scale if scale.shape[0] == 1 else scale[r : r + step]
        out[r : r + step] = weight[r : r + step].to(torch.float32) * s
    return out


def e8m0(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes -> float32 powers of two (2 ** (s - 127); 255 encodes NaN)."""
    s = scales.to(torch.int32)
    out = torch.ldexp(torch.ones_like(s, dtype=torch.float32), s - 127)
    return out.masked_fill_(s == 255, float("nan"))


def mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MXFP4 ``blocks`` uint8 [..., G, 16] and ``scales`` uint8 [..., G] -> float32 [..., G * 32]."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[-1] != 16 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match "
            "([..., G, 16] and [..., G])"
        )
    lead, groups = tuple(blocks.shape[:-2]), blocks.shape[-2]
    flat_blocks = blocks.reshape(-1, groups, 16)
    flat_scales = scales.reshape(-1, groups)
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    out = torch.empty(flat_blocks.shape[0], groups, 32, dtype=torch.float32, device=blocks.device)
    flat_scales = flat_scales.to(blocks.device)
    step = max(1, _row_step(groups * 32) // 8)  # the int64 code indices are 2x the float32 chunk
    for r in range(0, flat_blocks.shape[0], step):
        b = flat_blocks[r : r + step]
        chunk = out[r : r + step]
        chunk[..., 0::2] = lut[(b & 0x0F).long()]
        chunk[..., 1::2] = lut[(b >> 4).long()]
        chunk *= e8m0(flat_scales[r : r + step]).unsqueeze(-1)
    return out.reshape(*lead, groups * 32)


@functools.cache
def gguf_supported(ggml_type: str) -> bool:
    """Whether ``gguf.quants`` can dequantize this GGML type (by name, e.g. "Q4_K"): tried on one zero block."""
    import gguf
    import numpy as np
    from gguf import quants

    qtype = getattr(gguf.GGMLQuantizationType, ggml_type, None)
    if qtype is None or qtype not in gguf.GGML_QUANT_SIZES:
        return False
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return False
    return not qtype.name.startswith(("I8", "I16", "I32", "I64"))


def gguf_matrix(raw, ggml_type: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A GGUF tensor's bytes (numpy uint8, any shape) of GGML type ``ggml_type`` -> float32 of ``shape``
    (numpy order: [rows, cols] = [ne1, ne0]), dequantized in row chunks by ``gguf.quants``."""
    import gguf
    import numpy as np
    from gguf import quants

    qtype = gguf.GGMLQuantizationType[ggml_type]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    cols = shape[-1]
    if cols % block:
        raise ValueError(f"GGUF {ggml_type} rows of {cols} values are not whole blocks of {block}")
    row_bytes = cols // block * type_size
    rows = math.prod(shape[:-1])
    data = np.asarray(raw).reshape(-1).view(np.uint8)
    if data.size != rows * row_bytes:
        raise ValueError(
            f"GGUF {ggml_type} tensor of shape {list(shape)} needs {rows * row_bytes} bytes, got {data.size}"
        )
    data = data.reshape(rows, row_bytes)
    out = torch.empty(rows, cols, dtype=torch.float32)
    view = out.numpy()  # shares memory with out
    step = _row_step(cols)
    for r in range(0, rows, step):
        view[r : r + step] = quants.dequantize(data[r : r + step], qtype)
    return out.reshape(shape)
