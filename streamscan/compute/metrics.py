"""metrics: what else a matrix's singular values say, beyond the Spectrum SNR. Pure math (numpy); no I/O.
The ``snr`` column is compute/spectrum.py's own SNR with the scan method's rank floor (one implementation).

WeightWatcher 0.7.7's defaults (``WeightWatcher(model).analyze()``), reproduced from its source:
- eigenvalues are ``s**2`` of the unnormalized W, all ``min(m, n)`` of them;
- ``alpha``: its own power-law fit (``pl_package="ww"``, WWFit, not the ``powerlaw`` package), no xmax
  trimming (``xmax`` = the largest eigenvalue), data = eigenvalues > 1e-5. Every sorted eigenvalue but the
  largest is an xmin candidate; each gets the continuous MLE ``alpha = 1 + n / sum(log(x / xmin))`` and the
  KS distance ``D = max |1 - (x / xmin)^(1 - alpha) - i / n|`` (1 when alpha <= 1); the first smallest D
  wins. Under 20 eigenvalues, its small-N variant (bias-corrected alpha, penalized D). Above MAX_EVALS
  eigenvalues (matrices WeightWatcher does not analyze by default) MAX_XMINS evenly spaced candidates, so
  the fit is O(N^2) up to 15000 eigenvalues and O(N) above (``xmin_candidates``).
- ``spectral_norm`` = the largest eigenvalue (s[0]**2), ``log_spectral_norm`` = log10 of it,
  ``alpha_weighted`` = alpha * log_spectral_norm, ``stable_rank`` = sum(s**2) / s[0]**2,
  ``entropy`` = -sum(p log p) / log(rank), p = s**2 / sum(s**2) + 1e-10, rank = #{s > s[0] N eps};
- ``mp_softrank`` (``analyze(mp_fit=True)``): the fitted Marchenko-Pastur bulk edge / the largest eigenvalue
  of the rescaled ESD (brute force over sigma, scipy, then polished).
``effective_rank`` is Roy & Vetterli's exp(entropy of s / sum(s)). ``pl_package="powerlaw"`` fits with the
``powerlaw`` package instead (the ``metrics`` extra), as ``analyze(pl_package="powerlaw")`` would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from streamscan.records import DEFAULT_METHOD, METHODS

EVALS_THRESH = 1e-5
EPSILON = 1e-10
SMALL_N = 20  # WeightWatcher's small-N fit below this many eigenvalues
MIN_EVALS, MAX_EVALS, MAX_N = 8, 15000, 50000  # what WeightWatcher analyzes by default
MAX_XMINS = 1000  # xmin candidates above MAX_EVALS eigenvalues (the fit's time bound)
_ROWS = 32  # xmin candidates per block of the KS scan


def as_sorted(s) -> np.ndarray:
    """Singular values as float64 numpy, descending."""
    if hasattr(s, "detach"):
        s = s.detach().cpu().double().numpy()
    a = np.asarray(s, dtype=np.float64).ravel()
    return np.sort(a)[::-1]


def ww_eligible(shape: tuple[int, int]) -> bool:
    """Whether WeightWatcher's defaults analyze a matrix of this shape (min dim 8..15000, max dim <= 50000)."""
    big, small = max(shape), min(shape)
    return MIN_EVALS <= small <= MAX_EVALS and big <= MAX_N


@dataclass(frozen=True)
class PowerLaw:
    alpha: float | None
    xmin: float | None
    xmax: float | None
    D: float | None
    sigma: float | None
    num_pl_spikes: int | None


def xmin_candidates(N: int) -> np.ndarray:
    """The indices of the ascending eigenvalues tried as xmin: every one but the largest, as WWFit does, up
    to MAX_EVALS eigenvalues (the largest WeightWatcher analyzes by default); above, MAX_XMINS evenly spaced
    ones, so the KS scan below stays O(N * MAX_XMINS), linear in N."""
    if N - 1 <= MAX_EVALS:
        return np.arange(N - 1)
    return np.unique(np.linspace(0, N - 2, MAX_XMINS).round().astype(np.int64))


def _fit_standard(x: np.ndarray) -> tuple[int, float, float, float]:
    """WWFit on ascending X (len >= 2): (index of xmin, alpha, sigma, D), vectorized in blocks of xmin
    candidates. Time O(N * C), C = len(xmin_candidates(N)): O(N^2) up to MAX_EVALS eigenvalues, O(N) above;
    memory O(N * _ROWS)."""
    N = len(x)
    logx = np.log(x)
    tail = np.cumsum(logx[::-1])[::-1]  # sum of log x[i:]
    i = np.arange(N - 1)
    n = (N - i).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1 + n / (tail[:-1] - n * logx[:-1])
    cand = xmin_candidates(N)
    Ds = np.full(N - 1, np.inf)  # not a candidate: never chosen
    col = np.arange(N, dtype=np.float64)
    for b in range(0, len(cand), _ROWS):  # a block of xmin candidates against every x at or above the first
        r = cand[b : b + _ROWS]
        a = int(r[0])
        dev = logx[None, a:] - logx[r, None]
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(dev, 1 - alphas[r, None], out=dev)
            np.exp(dev, out=dev)  # (x / xmin) ** (1 - alpha)
            dev = np.abs(1 - dev - (col[None, a:] - r[:, None]) / n[r, None])
        dev[col[None, a:] < r[:, None]] = 0.0
        Ds[r] = dev.max(axis=1)
    Ds[cand[~(alphas[cand] > 1)]] = 1.0
    sigmas = (alphas - 1) / np.sqrt(n)
    k = int(np.argmin(Ds))
    return k, float(alphas[k]), float(sigmas[k]), float(Ds[k])


def _fit_small(x: np.ndarray, k_min: int = 8) -> tuple[int, float, float, float]:
    """WeightWatcher's small-N fit (fewer than SMALL_N eigenvalues)."""
    N = len(x)
    logx = np.log(x)
    alphas, Ds, Js = np.zeros(N - 1), np.ones(N - 1), np.full(N - 1, np.inf)
    for i in range(N - 1):
        n = N - i
        if n < k_min:
            continue
        ssum = np.sum(logx[i:]) - n * logx[i]
        if ssum <= 1e-12:
            continue
        a = 1.0 + (n - 1.0) / ssum
        alphas[i] = a
        if a <= 1.0:
            continue
        d = float(np.max(np.abs(np.arange(n) / n - (1.0 - (x[i:] / x[i]) ** (1.0 - a)))))
        Ds[i], Js[i] = d, d - 0.868 / np.sqrt(n)
    sigmas = (alphas - 1.0) / np.sqrt(N - np.arange(N - 1))
    if np.isfinite(Js).any():
        k = int(np.argmin(Js))
        return k, float(alphas[k]), float(sigmas[k]), float(Ds[k])
    ssum = np.sum(logx) - N * logx[0]
    if ssum <= 1e-12:
        return 0, 1.0, 0.0, 1.0
    a = 1.0 + (N - 1.0) / ssum
    d = float(np.max(np.abs(np.arange(N) / N - (1.0 - (x / x[0]) ** (1.0 - a)))))
    return 0, a, float(sigmas[0]), d


def power_law(s, pl_package: str = "ww") -> PowerLaw:
    """WeightWatcher's power-law fit of the eigenvalues s**2 (None fields when there are too few)."""
    evals = np.sort(as_sorted(s) ** 2)
    x = evals[evals > EVALS_THRESH]
    if len(x) < 2:
        return PowerLaw(None, None, None, None, None, None)
    if pl_package == "ww":
        k, alpha, sigma, D = (_fit_small if len(x) < SMALL_N else _fit_standard)(x)
        xmin, xmax = float(x[k]), float(x[-1])
    elif pl_package == "powerlaw":
        alpha, xmin, xmax, D, sigma = _powerlaw_package(x)
    else:
        raise ValueError(f"unknown pl_package {pl_package!r}; choose ww or powerlaw")
    if alpha is None or not math.isfinite(alpha):
        return PowerLaw(None, None, None, None, None, None)
    return PowerLaw(alpha, xmin, xmax, D, sigma, int(np.sum(evals >= xmin)))


def _powerlaw_package(x: np.ndarray):
    import contextlib
    import io
    import warnings

    import powerlaw  # the optional `metrics` extra

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmax=float(x[-1]), verbose=False, xmin_distribution="power_law")
    return float(fit.alpha), float(fit.xmin), float(x[-1]), float(fit.D), float(fit.sigma)


def matrix_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    return int(np.count_nonzero(s > s[0] * max(shape) * np.finfo(np.float64).eps))


def entropy(s: np.ndarray, shape: tuple[int, int]) -> float | None:
    """WeightWatcher's matrix entropy: Shannon entropy of s**2 / sum(s**2), over log(numerical rank)."""
    ev = s * s
    total = float(np.sum(ev))
    if total <= 0:
        return None
    p = ev / total + EPSILON
    rank = matrix_rank(s, shape) + EPSILON
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(-np.sum(p * np.log(p)) / np.log(rank))
    return value if math.isfinite(value) else None


def effective_rank(s: np.ndarray) -> float | None:
    """Roy & Vetterli (2007): exp(H(p)), p = s / sum(s)."""
    total = float(np.sum(s))
    if total <= 0:
        return None
    p = s[s > 0] / total
    return float(math.exp(-np.sum(p * np.log(p))))


def spectrum_snr(s: np.ndarray, shape: tuple[int, int], method: str = DEFAULT_METHOD) -> float | None:
    """The Spectrum SNR of a scan by METHOD: compute/spectrum.py's one SNR function, with METHOD's rank
    floor (``rank_floor``), so the column agrees with the scan's own score."""
    import torch

    from streamscan.compute.spectrum import rank_floor, snr_from_singular_values

    floor = rank_floor(method if method in METHODS else DEFAULT_METHOD, shape)
    snr = snr_from_singular_values(torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64)), shape, floor).snr
    return None if snr == math.inf else snr  # a degenerate matrix (ranked first by the scan): no number here


def mp_threshold(s: np.ndarray, shape: tuple[int, int]) -> float:
    """Spectrum's Marchenko-Pastur threshold on singular values: IQR/1.349 * (1 + sqrt(min/max))."""
    m, n = shape
    q25, q75 = np.percentile(s, [25, 75])
    return float((q75 - q25) / 1.349 * (1 + math.sqrt(min(m, n) / max(m, n))))


def mp_softrank(s: np.ndarray, shape: tuple[int, int], bandwidth: float = 0.1) -> float | None:
    """WeightWatcher's mp_softrank (analyze(mp_fit=True)); None without scipy or for a zero matrix."""
    try:
        from scipy import optimize
    except ImportError:
        return None
    N, M = max(shape), min(shape)
    Q = N / M
    evals = np.sort(s * s)
    total = float(np.sum(evals))
    if total <= 0:
        return None
    esd = evals * (len(evals) / total)
    lmax = float(esd[-1])
    scale = math.sqrt(lmax / (1 + 1 / math.sqrt(Q)) ** 2)
    fit_on = np.sqrt(esd) if Q == 1 else esd
    grid = np.linspace(0, float(np.max(fit_on)) + 0.5, 1000)
    density = np.empty(len(grid))
    step = max(1, 4_000_000 // len(fit_on))
    for a in range(0, len(grid), step):  # sklearn's linear-kernel KDE
        k = np.clip(1.0 - np.abs(grid[a : a + step, None] - fit_on[None, :]) / bandwidth, 0.0, None)
        density[a : a + step] = k.sum(axis=1)
    density /= len(fit_on) * bandwidth
    keep = density > 0.01
    xs, ys = grid[keep], density[keep]
    if not len(xs):
        return None
    peak, top = xs[np.argmax(ys)], xs.max()

    def residual(p):
        sigma = float(np.ravel(p)[0])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if Q == 1:
                val = np.nan_to_num(1 / (np.pi * sigma * sigma) * np.sqrt(4 - xs**2))
            else:
                b, a = (sigma * (1 + math.sqrt(1 / Q))) ** 2, (sigma * (1 - math.sqrt(1 / Q))) ** 2
                if b < peak or b > top or a > peak:
                    return 1000.0**2 * len(ys)
                val = np.nan_to_num(1 / (2 * np.pi * sigma * sigma * xs / Q) * np.sqrt((b - xs) * (xs - a)))
        return float(np.sum((val - ys) ** 2))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = optimize.brute(residual, (slice(0.05 * scale, 2.0 * scale, 0.01 * scale),), full_output=True)
    sigma = float(np.ravel(best[0])[0])
    return float((sigma * (1 + 1 / math.sqrt(Q))) ** 2 / lmax)


@dataclass(frozen=True)
class MatrixMetrics:
    alpha: float | None
    alpha_weighted: float | None
    xmin: float | None
    xmax: float | None
    D: float | None
    num_pl_spikes: int | None
    stable_rank: float | None
    spectral_norm: float | None
    log_spectral_norm: float | None
    mp_softrank: float | None
    entropy: float | None
    effective_rank: float | None
    matrix_rank: int
    snr: float | None
    ww_eligible: bool

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = tuple(MatrixMetrics.__dataclass_fields__)


def matrix_metrics(
    s, shape: tuple[int, int], *, pl_package: str = "ww", softrank: bool = True, method: str = DEFAULT_METHOD
) -> MatrixMetrics:
    """Every metric of one matrix of SHAPE from its singular values S (any order), computed by METHOD."""
    s = as_sorted(s)
    top = float(s[0]) if len(s) else 0.0
    fit = power_law(s, pl_package)
    spec = top * top if top > 0 else None
    log_spec = math.log10(spec) if spec else None
    return MatrixMetrics(
        alpha=fit.alpha,
        alpha_weighted=fit.alpha * log_spec if fit.alpha is not None and log_spec is not None else None,
        xmin=fit.xmin,
        xmax=fit.xmax,
        D=fit.D,
        num_pl_spikes=fit.num_pl_spikes,
        stable_rank=float(np.sum(s * s)) / spec if spec else None,
        spectral_norm=spec,
        log_spectral_norm=log_spec,
        mp_softrank=mp_softrank(s, shape) if softrank and spec else None,
        entropy=entropy(s, shape) if spec else None,
        effective_rank=effective_rank(s),
        matrix_rank=matrix_rank(s, shape) if spec else 0,
        snr=spectrum_snr(s, shape, method) if spec else None,
        ww_eligible=ww_eligible(shape),
    )
