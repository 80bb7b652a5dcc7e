"""dequant.py against hand-built blocks with known values and against independent implementations."""

import math

import numpy as np
import pytest
import torch

from streamscan.checkpoint import dequant

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def test_fp8_block_scales_each_block_and_crops_the_edges():
    # 5x7 weight in 2x3 blocks: scale grid 3x3, last block row has 1 row, last block column 1 column
    values = [
        [0.5, -1.0, 1.5, 2.0, -3.0, 4.0, 448.0],
        [-0.25, 6.0, -8.0, 0.125, 1.0, -1.0, -448.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0],
        [0.5, 0.75, 0.875, 1.75, 3.5, 14.0, 28.0],
    ]
    weight = torch.tensor(values).to(E4M3)
    scale = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.25, 8.0], [10.0, -1.0, 3.0]])
    expected = [[v * scale[i // 2, j // 3].item() for j, v in enumerate(row)] for i, row in enumerate(values)]
    got = dequant.fp8_block(weight, scale, (2, 3))
    assert got.dtype == torch.float32
    assert got.tolist() == expected  # every value is exact in E4M3 and in the product


def test_fp8_block_deepseek_shape_576_rows_is_4_and_a_half_blocks():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(576, 300, generator=g) * 30).to(E4M3)
    s = torch.rand(5, 3, generator=g) + 0.5
    got = dequant.fp8_block(w, s)
    rows = torch.arange(576) // 128
    cols = torch.arange(300) // 128
    ref = w.to(torch.float64) * s.to(torch.float64)[rows][:, cols]
    assert torch.equal(got.to(torch.float64), ref.to(torch.float32).to(torch.float64))
    assert got[512:, 256:].abs().sum() > 0  # the cropped corner block is scaled by s[4, 2]
    assert torch.allclose(got[575, 299], w[575, 299].float() * s[4, 2])


def test_fp8_block_small_and_row_chunked_paths_agree_bit_for_bit(monkeypatch):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(300, 200, generator=g) * 30).to(E4M3)
    s = torch.rand(3, 2, generator=g) + 0.5
    small = dequant.fp8_block(w, s)  # the whole matrix at once
    monkeypatch.setattr(dequant, "SMALL_ELEMENTS", 100)  # now it goes block row by block row
    monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 100 * 200)
    assert torch.equal(dequant.fp8_block(w, s), small)


def test_fp8_e5m2_and_per_tensor_and_per_channel_scales():
    w = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, -57344.0]]).to(E5M2)
    assert dequant.fp8_scaled(w, torch.tensor(0.5)).tolist() == [[0.5, -1.0, 0.25], [1.5, 0.125, -28672.0]]
    assert dequant.fp8_scaled(w, torch.tensor([[2.0], [4.0]])).tolist() == [[2.0, -4.0, 1.0], [12.0, 1.0, -229376.0]]
    assert dequant.fp8_scaled(w, torch.tensor([2.0, 4.0])).tolist() == [[2.0, -4.0, 1.0], [12.0, 1.0, -229376.0]]
    with pytest.raises(ValueError, match="neither per-tensor nor per-channel"):
        dequant.fp8_scaled(w, torch.ones(3))
    with pytest.raises(ValueError, match="expected \\(1, 1\\)"):
        dequant.fp8_block(w, torch.ones(2, 2))


def test_e8m0_scales_are_powers_of_two_and_255_is_nan():
    got = dequant.e8m0(torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8))
    assert got[:-1].tolist() == [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 2.0**127]
    assert math.isnan(got[-1].item())


def test_mxfp4_hand_built_block_low_nibble_first():
    # one block of 32 values: byte k holds value 2k in its low nibble and 2k+1 in its high nibble
    codes = list(range(16)) + list(range(15, -1, -1))
    packed = [codes[2 * k] | (codes[2 * k + 1] << 4) for k in range(16)]
    blocks = torch.tensor([[packed, packed]], dtype=torch.uint8)  # [1 row, 2 blocks, 16]
    scales = torch.tensor([[127, 129]], dtype=torch.uint8)  # x1 and x4
    got = dequant.mxfp4(blocks, scales)
    fp4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    expected = [fp4[c] for c in codes] + [4 * fp4[c] for c in codes]
    assert got.shape == (1, 64) and got[0].tolist() == expected
    assert str(got[0, 8].item()) == "-0.0"  # code 8 is negative zero


def test_mxfp4_matches_llama_cpp_mxfp4_on_random_blocks():
    """gguf.quants (llama.cpp's own code) stores MXFP4 as [e8m0 | 16 bytes], value j in the low nibble
    of byte j and value j+16 in its high nibble; repack ours into that layout and compare."""
    rng = np.random.default_rng(1)
    rows, groups = 24, 5
    codes = rng.integers(0, 16, size=(3, rows, groups, 32), dtype=np.uint8)
    exps = rng.integers(110, 140, size=(3, rows, groups), dtype=np.uint8)
    ours_blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    got = dequant.mxfp4(torch.from_numpy(ours_blocks), torch.from_numpy(exps))
    ggml = np.concatenate([exps[..., None], codes[..., :16] | (codes[..., 16:] << 4)], axis=-1)
    ref = quants.dequantize(ggml.reshape(3 * rows, groups * 17), gguf.GGMLQuantizationType.MXFP4)
    assert got.shape == (3, rows, groups * 32)
    np.testing.assert_array_equal(got.reshape(3 * rows, -1).numpy(), ref)


def test_mxfp4_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        dequant.mxfp4(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "F16"])
def test_gguf_matrix_row_chunks_match_one_call(monkeypatch, qtype):
    t = gguf.GGMLQuantizationType[qtype]
    x = np.random.default_rng(2).standard_normal((70, 96)).astype(np.float32)
    raw = quants.quantize(x, t)
    whole = quants.dequantize(raw, t)
    monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 96 * 8)  # 9 chunks of 8 rows
    got = dequant.gguf_matrix(raw.reshape(-1), qtype, (70, 96))
    np.testing.assert_array_equal(got.numpy(), whole)
    assert np.linalg.norm(got.numpy() - x) < 0.15 * np.linalg.norm(x)  # and it is the matrix that was quantized


def test_gguf_support_by_type_name():
    assert dequant.gguf_supported("Q4_K") and dequant.gguf_supported("F32")
    assert not dequant.gguf_supported("Q4_0_4_4") and not dequant.gguf_supported("I32")
    with pytest.raises(ValueError, match="needs"):
        dequant.gguf_matrix(np.zeros(10, dtype=np.uint8), "Q8_0", (2, 32))


@pytest.mark.parametrize(
    "shape,block,count", [((32, 64), (128, 128), 64), ((300, 200), (128, 128), 3), ((5, 7), (2, 3), 4)]
)
def test_fp8_block_stack_is_each_matrix_dequantized_alone(monkeypatch, shape, block, count):
    g = torch.Generator().manual_seed(2)
    ws = (torch.randn(count, *shape, generator=g) * 20).to(E4M3)
    grid = (math.ceil(shape[0] / min(block[0], shape[0])), math.ceil(shape[1] / min(block[1], shape[1])))
    ss = torch.rand(count, *grid, generator=g) + 0.5
    alone = torch.stack([dequant.fp8_block(w, s, block) for w, s in zip(ws, ss)])
    assert torch.equal(dequant.fp8_block_stack(ws, ss, block), alone)  # one pass
    monkeypatch.setattr(dequant, "SMALL_ELEMENTS", 1)
    assert torch.equal(dequant.fp8_block_stack(ws, ss, block), alone)  # matrix by matrix
    with pytest.raises(ValueError, match="does not fit"):
        dequant.fp8_block_stack(ws, ss[:, :, :1].repeat(1, 1, grid[1] + 1), block)
