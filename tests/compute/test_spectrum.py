"""Known-answer tests of the SNR math and agreement of the methods."""

import math

import pytest
import torch

from streamscan.compute.spectrum import (
    gram,
    mp_factor,
    score,
    singular_values,
    snr_from_singular_values,
)
from tests.conftest import planted


def quantile(values, q):
    """Linear-interpolated quantile, written out by hand (torch.quantile's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def snr_by_hand(s, m, n):
    s = sorted(s, reverse=True)
    sigma = (quantile(s, 0.75) - quantile(s, 0.25)) / 1.349
    thr = sigma * (1 + math.sqrt(min(m, n) / max(m, n)))
    signal = sum(x for x in s if x > thr)
    below = [x for x in s if x <= thr]
    noise = sum(below) if below else 1.0
    return signal / noise / s[0]


def test_small_planted_spectrum_exact_answer():
    # s = [8, 3, 1, .5]: q25 = .875, q75 = 4.25, threshold = 2.502 * 1.8165 = 4.54 -> only 8 is signal.
    W = planted(4, 6, [8, 3, 1, 0.5])
    r = score(W, "gram64")
    assert r.snr == pytest.approx(8 / 4.5 / 8, rel=1e-12)
    assert r.n_signal == 1
    assert r.sigma_max == pytest.approx(8, rel=1e-12)


@pytest.mark.parametrize("method,rel", [("gram64", 1e-10), ("svdvals64", 1e-12), ("svdvals32", 1e-4)])
@pytest.mark.parametrize("shape", [(64, 160), (160, 64), (96, 96)])
def test_planted_spectrum_plus_noise_matches_hand_computation(method, rel, shape):
    m, n = shape
    k = min(m, n)
    s = [50.0, 30.0, 20.0] + [1.0 + 0.5 * math.sin(i) for i in range(k - 3)]
    W = planted(m, n, s, seed=1)
    assert score(W, method).snr == pytest.approx(snr_by_hand(s, m, n), rel=rel)


def test_pure_noise_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(200, 500, generator=g, dtype=torch.float64)
    exact = score(W, "svdvals64")
    assert exact.snr == pytest.approx(snr_by_hand(torch.linalg.svdvals(W).tolist(), 200, 500), rel=1e-12)
    assert score(W, "gram64").snr == pytest.approx(exact.snr, rel=1e-10)
    assert score(W, "svdvals32").snr == pytest.approx(exact.snr, rel=1e-4)
    # signal/noise is scale-free, the final division by S[0] is not: SNR(cW) = SNR(W) / c.
    assert score(4 * W, "gram64").snr == pytest.approx(exact.snr / 4, rel=1e-10)


def test_transpose_and_bf16_storage_do_not_change_gram_result():
    W = planted(120, 300, [9.0, 4.0] + [1.0] * 118, seed=2)
    a = score(W, "gram64").snr
    assert score(W.T.contiguous(), "gram64").snr == pytest.approx(a, rel=1e-12)
    Wb = W.to(torch.bfloat16)
    assert score(Wb, "gram64").snr == pytest.approx(score(Wb.double(), "svdvals64").snr, rel=1e-10)


def test_gram_is_chunked_and_block_triangular(monkeypatch):
    import streamscan.compute.spectrum as sp

    W = torch.randn(600, 700, dtype=torch.float64)
    monkeypatch.setattr(sp, "CHUNK_ELEMENTS", 600 * 64)  # many column chunks
    G = gram(W)
    full = W @ W.T
    upper = torch.triu(torch.ones(600, 600, dtype=torch.bool))
    assert torch.allclose(G[upper], full[upper], rtol=1e-12, atol=1e-9)
    S, _ = singular_values(W, "gram64")
    assert torch.allclose(S, torch.linalg.svdvals(W), rtol=1e-9)


@pytest.mark.parametrize(
    "W,reason",
    [
        (torch.zeros(50, 80), "all-zero"),
        (torch.zeros(1, 300), "all-zero"),
        (torch.tensor([[1.0, float("nan")], [0.0, 2.0]]), "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 2.0]]), "NaN or Inf"),
        (torch.randn(5), "1-D"),
        (torch.randn(0, 5), "too small"),
    ],
)
@pytest.mark.parametrize("method", ["gram64", "svdvals32", "svdvals64"])
def test_unscorable_inputs_give_null_with_reason(W, reason, method):
    r = score(W, method)
    assert r.snr is None and r.degenerate is None
    assert reason in r.reason


@pytest.mark.parametrize(
    "W,kind",
    [
        (torch.full((50, 80), 0.3), "rank-deficient"),  # constant matrix = rank 1
        (planted(40, 90, [5.0]), "rank-deficient"),  # rank 1
        (planted(40, 90, [5.0, 4.0, 3.0]), "rank-deficient"),  # rank 3: the noise is rounding error
        # one singular value (the reference's unsqueezed 1 x H, e.g. Qwen2-MoE's shared_expert_gate): IQR 0,
        # threshold 0, the value is signal, the noise sum is 0 -> the reference's Infinity
        (torch.randn(1, 300), "noise-sum-0"),
        (torch.randn(300, 1), "noise-sum-0"),
        (torch.eye(64) * 0.7, "noise-sum-0"),  # all values equal: threshold 0, no noise
    ],
)
@pytest.mark.parametrize("method", ["gram64", "svdvals32", "svdvals64"])
def test_degenerate_matrices_score_inf_with_their_kind(W, kind, method):
    r = score(W, method)
    assert r.snr == math.inf and r.reason is None
    assert r.degenerate == kind
    assert r.sigma_max > 0


def test_one_by_h_follows_the_reference_formula():
    """The reference on a 1 x H matrix: S = [s], q25 = q75 = s, sigma 0, threshold 0, s > 0 is signal, the
    noise sum is 0 -> ``signal / noise if noise != 0 else inf`` = inf; inf / S[0] = inf."""
    W = torch.tensor([[3.0, 4.0]])
    r = score(W, "svdvals64")
    assert (r.snr, r.degenerate, r.sigma_max, r.threshold, r.n_signal) == (math.inf, "noise-sum-0", 5.0, 0.0, 1)


def test_no_values_below_threshold_is_the_references_infinity():
    # Two equal singular values: IQR = 0, threshold 0, every value is signal, the noise sum is 0.
    for S in (torch.tensor([2.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 2.0], dtype=torch.float32)):
        r = snr_from_singular_values(S, (2, 2))
        assert (r.snr, r.degenerate, r.n_signal) == (math.inf, "noise-sum-0", 2)


def test_rank_deficient_is_flagged_only_under_the_floor():
    # q25 = 0, q75 = 1e-9 + (4 - 1e-9) / 4, threshold ~1.27: 4 is signal, 1e-9 and the zeros are noise
    S = torch.tensor([4.0, 1e-9, 0.0, 0.0], dtype=torch.float64)
    assert snr_from_singular_values(S, (4, 8), rtol=1e-8).degenerate == "rank-deficient"  # floor 4e-8
    r = snr_from_singular_values(S, (4, 8), rtol=1e-12)  # 1e-9 is above this floor: a real (tiny) noise sum
    assert r.degenerate is None and r.snr == pytest.approx(4.0 / 1e-9 / 4.0)


def test_mp_factor_is_one_plus_sqrt_aspect():
    assert mp_factor(2048, 5632) == pytest.approx(1 + math.sqrt(2048 / 5632), rel=1e-15)
    assert mp_factor(5632, 2048) == mp_factor(2048, 5632)


def test_svdvals32_reproduces_the_reference_arithmetic():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(48, 96, generator=g).to(torch.bfloat16)
    # The reference: fp32 weights, svdvals, fp32 quantiles/sums, numpy-float MP factor.
    Wf = W.float()
    S = torch.linalg.svdvals(Wf)
    sigma = (torch.quantile(S, 0.75) - torch.quantile(S, 0.25)) / 1.349
    thr = sigma * math.sqrt((1 + math.sqrt(48 / 96)) ** 2)
    ref = float(S[S > thr].sum() / S[S <= thr].sum() / S[0])
    assert score(W, "svdvals32").snr == ref


def _snr_with_torch_ops(S, shape):
    """The SNR as torch would compute it in float64, op by op (the path float32 spectra still take)."""
    S = torch.sort(S, descending=True).values
    q = torch.quantile(S, torch.tensor([0.25, 0.75], dtype=S.dtype))
    threshold = (q[1] - q[0]) / 1.349 * mp_factor(*shape)
    above = S > threshold
    noise = S[~above].sum() if bool((~above).any()) else torch.ones((), dtype=S.dtype)
    return float(threshold), int(above.sum()), float(S[above].sum() / noise / S[0])


@pytest.mark.parametrize("seed", range(40))
def test_float64_spectra_take_python_floats_with_torch_quantiles(seed):
    # float64 spectra are post-processed in Python floats (no per-op torch cost): the quartiles and threshold
    # are torch.quantile's bit for bit, the sums exactly rounded (math.fsum), so the SNR agrees with torch's
    # own float64 arithmetic to rounding and does not depend on the order the values come in
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 600, (), generator=g))
    S = torch.rand(k, dtype=torch.float64, generator=g) ** 3 * 10
    S[: 1 + seed % 7] *= 1 + seed
    shape = (k, k + seed * 13)
    r = snr_from_singular_values(S, shape)
    threshold, n_signal, snr = _snr_with_torch_ops(S, shape)
    assert r.threshold == threshold and r.n_signal == n_signal
    assert r.snr == pytest.approx(snr, rel=1e-13)
    shuffled = S[torch.randperm(k, generator=g)]
    assert snr_from_singular_values(shuffled, shape) == r


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (200, 7), (511, 600), (3, 3)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_small_gram_shortcut_is_bit_identical_to_the_chunked_gram(shape, dtype):
    from streamscan.compute.spectrum import gram_from_pieces

    W = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    W[0] = 0.0  # zeros (and their signs) go through both alike
    fast, chunked = gram(W), gram_from_pieces([W], shape)
    assert torch.equal(fast, chunked)
    assert torch.equal(torch.signbit(fast), torch.signbit(chunked))
