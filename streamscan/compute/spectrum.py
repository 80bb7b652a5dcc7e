"""spectrum: singular values and the Spectrum SNR. Pure math on tensors; no I/O, no logging.

Methods
- ``gram64`` (default): float64 Gram matrix on the smaller side (only its upper block triangle is
  computed, in column/row chunks converted from the stored dtype) and ``torch.linalg.eigvalsh``;
  S = sqrt(eigenvalues). Agrees with float64 SVD to ~1e-12 relative SNR.
- ``svdvals32``: the reference's own computation (float32 ``torch.linalg.svdvals`` on the weight as
  stored, SNR arithmetic in float32), for comparisons with published Spectrum scans.
- ``svdvals64``: float64 ``torch.linalg.svdvals``; exact, slowest.

Batches: :func:`score_batch` scores B matrices of one shape as one stack (a batched Gram built with the
same chunks and blocks as :func:`gram`, one batched ``eigvalsh``), so a GPU pays its per-call latency once.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch

from streamscan.records import DEFAULT_METHOD, METHODS, NOISE_SUM_0, RANK_DEFICIENT

CHUNK_ELEMENTS = 1 << 22  # float64 elements converted at a time (32 MiB)
BLOCKED_FROM = 512  # a Gram of this small side or more is built by row blocks (its upper block triangle)
MIN_DIM = 1  # a 1 x n matrix has one singular value: no noise, the reference's Infinity (noise-sum-0)
GRAM_PATHS = ("gram64", "gram64-host-eig")  # where gram64's eigenvalues are found (solver.py)


@dataclass(frozen=True)
class SNR:
    """A matrix's score: ``snr`` is None exactly when ``reason`` says why it could not be scored.

    A degenerate matrix (``degenerate`` = ``NOISE_SUM_0`` or ``RANK_DEFICIENT``) scores ``math.inf``: the
    reference ranks it first in its type (its ``Infinity``, or a huge finite fp32 value)."""

    snr: float | None
    reason: str | None = None
    sigma_max: float | None = None
    threshold: float | None = None
    n_signal: int | None = None
    degenerate: str | None = None
    # the matrix's singular values (descending, CPU) when it had a spectrum; kept beside the journal, never in it
    singular_values: torch.Tensor | None = field(default=None, compare=False, repr=False)


def mp_factor(m: int, n: int) -> float:
    """The reference's Marchenko-Pastur factor sqrt((1 + sqrt(beta))^2), beta = min/max."""
    beta = min(m, n) / max(m, n)
    return math.sqrt((1 + math.sqrt(beta)) ** 2)


def rank_floor(method: str, shape: tuple[int, int]) -> float:
    """METHOD's numerical floor relative to S[0] for a matrix of SHAPE (``snr_from_singular_values``'s
    ``rtol``): gram64 squares the matrix, so sqrt(min(m, n) eps64); svdvals, max(m, n) eps of its dtype."""
    m, n = shape
    if method == "gram64":
        return math.sqrt(min(m, n) * torch.finfo(torch.float64).eps)
    if method in ("svdvals32", "svdvals64"):
        return max(m, n) * torch.finfo(torch.float32 if method == "svdvals32" else torch.float64).eps
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def snr_from_singular_values(S: torch.Tensor, shape: tuple[int, int], rtol: float = 0.0, *, keep: bool = False) -> SNR:
    """The reference's SNR from singular values S (any order), computed in S's dtype.

    No value at or below the threshold (the reference's noise sum 0, its ``Infinity``) scores ``math.inf``
    with ``degenerate`` = ``noise-sum-0``. ``rtol`` is the method's numerical floor relative to S[0]: when
    every value at or below the threshold is under it, the "noise" is rounding error of a rank-deficient
    matrix (the reference's fp32 gives a huge finite SNR, ranked first): ``math.inf``, ``rank-deficient``.
    With ``keep`` the result carries S as its ``singular_values``.
    """
    out = _snr(S, shape, rtol)
    if keep:  # set on the fresh result (dataclasses.replace would cost more than the SNR of a tiny matrix)
        object.__setattr__(out, "singular_values", S)
    return out


def _snr(S: torch.Tensor, shape: tuple[int, int], rtol: float) -> SNR:
    m, n = shape
    if S.dtype == torch.float64 and S.device.type == "cpu":
        return _snr_float64(S.tolist(), shape, rtol)
    S = torch.sort(S, descending=True).values
    if S.numel() == 0 or not bool(torch.isfinite(S).all()):
        return SNR(None, "singular values are not finite")
    top = S[0]
    if float(top) <= 0.0:
        return SNR(None, "all-zero matrix")
    q = torch.quantile(S, torch.tensor([0.25, 0.75], dtype=S.dtype))
    sigma = (q[1] - q[0]) / 1.349
    threshold = sigma * mp_factor(m, n)
    above = S > threshold
    signal = S[above].sum() if bool(above.any()) else torch.zeros((), dtype=S.dtype)
    below = ~above
    if not bool(below.any()):  # no value at or below the threshold: the reference's Infinity
        return SNR(math.inf, None, float(top), float(threshold), int(above.sum()), NOISE_SUM_0)
    noise = S[below].sum()
    if float(S[below].max()) <= float(top) * rtol:  # rtol 0: every noise value is exactly 0
        return SNR(math.inf, None, float(top), float(threshold), int(above.sum()), RANK_DEFICIENT)
    value = float(signal / noise / top)
    if not math.isfinite(value):
        return SNR(None, "SNR is not finite", float(top))
    return SNR(value, None, float(top), float(threshold), int(above.sum()))


def _lerp(start: float, end: float, weight: float) -> float:
    """torch.lerp's formula (the one torch.quantile's linear interpolation uses)."""
    return start + weight * (end - start) if abs(weight) < 0.5 else end - (end - start) * (1 - weight)


def _quantile(ascending: list[float], q: float) -> float:
    """torch.quantile(…, q, interpolation="linear") of sorted values, in the same float64 steps."""
    rank = q * (len(ascending) - 1)
    lo = int(rank)
    return _lerp(ascending[lo], ascending[math.ceil(rank)], rank - lo)


def _snr_float64(values: list[float], shape: tuple[int, int], rtol: float) -> SNR:
    """:func:`snr_from_singular_values` of float64 values, in Python floats: the same steps without torch's
    per-operation cost (tens of operations per matrix, ~0.15 ms on a 64-value spectrum). The sums are
    ``math.fsum`` (exactly rounded), so the result does not depend on the order or the batching."""
    m, n = shape
    if not values or not all(map(math.isfinite, values)):
        return SNR(None, "singular values are not finite")
    values.sort()  # ascending, as torch.quantile sorts
    top = values[-1]
    if top <= 0.0:
        return SNR(None, "all-zero matrix")
    sigma = (_quantile(values, 0.75) - _quantile(values, 0.25)) / 1.349
    threshold = sigma * mp_factor(m, n)
    cut = bisect.bisect_right(values, threshold)  # values[cut:] are above the threshold
    if not cut:  # no value at or below the threshold: the reference's Infinity
        return SNR(math.inf, None, top, threshold, len(values), NOISE_SUM_0)
    if values[cut - 1] <= top * rtol:  # rtol 0: every noise value is exactly 0
        return SNR(math.inf, None, top, threshold, len(values) - cut, RANK_DEFICIENT)
    signal = math.fsum(values[cut:])
    noise = math.fsum(values[:cut])
    value = signal / noise / top
    if not math.isfinite(value):
        return SNR(None, "SNR is not finite", top)
    return SNR(value, None, top, threshold, len(values) - cut)


def memory_bytes(
    shape: tuple[int, int], element_size: int, method: str = DEFAULT_METHOD, kind: str = "cpu", piece: int | None = None
) -> int:
    """An upper bound on the bytes a job holds on its compute device at its peak, input included.

    gram64: the input as stored, one float64 chunk, the Gram (k x k float64), the largest block product
    (k/4 x k), and eigvalsh's copy of the Gram; on CUDA, cuSOLVER's syevd workspace is budgeted as
    another k x k. svdvals: the input, its float32/64 copy, the LAPACK/cuSOLVER copy it overwrites,
    and a k x k workspace. Both: the NaN/Inf check's boolean chunk and small eigen/SVD vectors (8 MiB + 64k).
    Measured on CPU (RSS beyond the input): 2048x5632 107 MB vs 112 MB estimated, 4096x1024 51 vs 58.
    With PIECE (gram64 read in pieces, :func:`score_pieces`): only one piece of PIECE bytes as stored is
    counted in place of the whole input.
    """
    m, n = shape
    k = min(m, n)
    stored = (m * n * element_size if piece is None else piece) + SHARED_BYTES + 64 * k
    if method == "gram64":
        chunk = min(CHUNK_ELEMENTS, k * max(1, CHUNK_ELEMENTS // max(k, 1)), m * n) * 8
        work = 8 * k * k * (1 + 0.25 + 1 + (1 if kind == "cuda" else 0))
        return int(stored + chunk + work)
    if method in ("svdvals32", "svdvals64"):
        size = 4 if method == "svdvals32" else 8
        return int(stored + 2 * m * n * size + k * k * size + (m + n) * size * 8)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


SHARED_BYTES = CHUNK_ELEMENTS * 2  # the NaN/Inf check's chunk and small vectors: once per job, batched or not


def batch_member_bytes(
    shape: tuple[int, int], element_size: int, method: str = DEFAULT_METHOD, kind: str = "cpu"
) -> int:
    """What each further member of a batched job (score_batch) adds to :func:`memory_bytes` of its first."""
    return memory_bytes(shape, element_size, method, kind) - SHARED_BYTES


def _one_product(shape: tuple[int, int]) -> bool:
    """Whether the Gram of SHAPE is one float64 chunk in one block."""
    return min(shape) < BLOCKED_FROM and max(shape) <= chunk_step(shape)


def chunk_step(shape: tuple[int, int]) -> int:
    """Rows (m > n) or columns (m <= n) of W per float64 chunk of the Gram: CHUNK_ELEMENTS // min(m, n)."""
    return max(1, CHUNK_ELEMENTS // min(shape))


def _chunks(pieces, shape: tuple[int, int], device: torch.device | str | None):
    """Yield float64 blocks X (k x w), k = min(m, n), whose X Xᵀ sum to the small-side Gram (one copy each).

    PIECES are W's consecutive row bands (m > n) or column strips (m <= n) in its stored dtype, each a
    multiple of :func:`chunk_step` wide but the last: the chunks are the same whatever the pieces."""
    m, n = shape
    step = chunk_step(shape)
    for P in pieces:
        if m <= n:
            for c in range(0, P.shape[1], step):
                yield P[:, c : c + step].to(device=device, dtype=torch.float64)
        else:
            for c in range(0, P.shape[0], step):
                yield P[c : c + step].to(device=device, dtype=torch.float64).T


def gram_from_pieces(
    pieces, shape: tuple[int, int], device: torch.device | str | None = None, blocks: int = 4
) -> torch.Tensor:
    """:func:`gram` of the matrix of SHAPE whose row bands (m > n) or column strips (m <= n) PIECES yields in
    order (see :func:`_chunks`): the matrix need never be in memory whole. Bit-identical to :func:`gram`."""
    k = min(shape)
    G = torch.zeros((k, k), dtype=torch.float64, device=device)
    nb = blocks if k >= BLOCKED_FROM else 1
    cuts = [i * k // nb for i in range(nb + 1)]
    for X in _chunks(pieces, shape, device):
        for a, b in zip(cuts[:-1], cuts[1:]):
            G[a:b, a:] += X[a:b] @ X[a:].T
        del X
    return G


def gram(W: torch.Tensor, device: torch.device | str | None = None, blocks: int = 4) -> torch.Tensor:
    """Upper block triangle of the float64 Gram matrix on W's smaller side (lower part is garbage-free zeros)."""
    m, n = W.shape
    if _one_product((m, n)):
        # one chunk and one block: gram_from_pieces' zeros + X Xᵀ (the + 0.0 keeps its signs of zero), without
        # its per-chunk steps, which cost more than the product at these sizes
        X = W.to(device=device, dtype=torch.float64)
        X = X if m <= n else X.T
        return (X @ X.T).add_(0.0)
    return gram_from_pieces([W], (m, n), device, blocks)


def score_pieces(pieces, shape: tuple[int, int], device=None) -> SNR:
    """:func:`score` (gram64) of the matrix of SHAPE read as PIECES (row bands if m > n, else column strips,
    each a multiple of :func:`chunk_step` wide but the last): only one piece and the Gram are in memory at a
    time. Same result as ``score(W, "gram64")`` bit for bit; the finiteness check is made piece by piece."""
    m, n = shape
    if min(m, n) < MIN_DIM:
        return SNR(None, f"{m}x{n} matrix: too small for a spectrum (needs at least {MIN_DIM}x{MIN_DIM})")
    finite = [True]

    def checked():
        for P in pieces:
            if not _all_finite(P):
                finite[0] = False
                return
            yield P

    G = gram_from_pieces(checked(), shape, device)
    if not finite[0]:
        return SNR(None, "weights contain NaN or Inf")
    eig = torch.linalg.eigvalsh(G, UPLO="U").cpu()
    del G
    S = torch.sqrt(torch.clamp(eig, min=0)).flip(0)
    return snr_from_singular_values(S, (m, n), rank_floor("gram64", (m, n)), keep=True)


def _small_grams(stack: torch.Tensor) -> torch.Tensor:
    """[B, k, k]: :func:`gram` of each matrix of a CPU stack, bit for bit. Small matrices whose float64 copies
    start on 64-byte boundaries in one converted stack (BLAS results may depend on alignment, and a fresh
    tensor is 64-byte aligned) share that conversion and one + 0.0; the others go one by one through gram()."""
    B, m, n = stack.shape
    k = min(m, n)
    if not (_one_product((m, n)) and (m * n) % 8 == 0):
        return torch.stack([gram(W) for W in stack])
    X = stack.to(torch.float64)
    X = X if m <= n else X.transpose(1, 2)
    G = torch.empty((B, k, k), dtype=torch.float64)
    for i in range(B):
        torch.mm(X[i], X[i].T, out=G[i])
    return G.add_(0.0)


def gram_batch(Ws: torch.Tensor, device: torch.device | str | None = None, blocks: int = 4) -> torch.Tensor:
    """:func:`gram` of each matrix of a [B, m, n] stack, as one [B, k, k] stack (same chunks, same blocks)."""
    B, m, n = Ws.shape
    k = min(m, n)
    G = torch.zeros((B, k, k), dtype=torch.float64, device=device)
    nb = blocks if k >= BLOCKED_FROM else 1
    cuts = [i * k // nb for i in range(nb + 1)]
    step = max(1, CHUNK_ELEMENTS // k)
    for c in range(0, max(m, n), step):
        if m <= n:
            X = Ws[:, :, c : c + step].to(device=device, dtype=torch.float64)
        else:
            X = Ws[:, c : c + step].to(device=device, dtype=torch.float64).transpose(1, 2)
        for a, b in zip(cuts[:-1], cuts[1:]):
            G[:, a:b, a:] += X[:, a:b] @ X[:, a:].transpose(1, 2)
        del X
    return G


def eigenvalues(G: torch.Tensor, path: str = "gram64") -> torch.Tensor:
    """Ascending eigenvalues (on the CPU) of the upper triangle of G ([k, k] or [B, k, k]) by PATH: on G's
    device (``gram64``; on CUDA with the library the process prefers, see solver.py) or on the host
    (``gram64-host-eig``)."""
    if path not in GRAM_PATHS:
        raise ValueError(f"unknown solver path {path!r}; choose one of {', '.join(GRAM_PATHS)}")
    if path == "gram64-host-eig":
        return torch.linalg.eigvalsh(G.cpu(), UPLO="U")
    return torch.linalg.eigvalsh(G, UPLO="U").cpu()


def singular_values(
    W: torch.Tensor, method: str = DEFAULT_METHOD, device=None, path: str = "gram64"
) -> tuple[torch.Tensor, float]:
    """Singular values of W (descending, on CPU) and the method's numerical floor relative to S[0].
    ``path``: where gram64 finds the eigenvalues (:func:`eigenvalues`); the Gram is the same on every path."""
    m, n = W.shape
    if method == "gram64":
        eig = eigenvalues(gram(W, device), path)
        S = torch.sqrt(torch.clamp(eig, min=0)).flip(0)
        return S, rank_floor(method, (m, n))
    if method in ("svdvals32", "svdvals64"):
        dtype = torch.float32 if method == "svdvals32" else torch.float64
        S = torch.linalg.svdvals(W.to(device=device, dtype=dtype)).cpu()
        return S, rank_floor(method, (m, n))
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def score(W: torch.Tensor, method: str = DEFAULT_METHOD, device=None, path: str = "gram64") -> SNR:
    """The SNR of one weight matrix, or a reason why it has none. Never raises on degenerate input."""
    if W.ndim != 2:
        return SNR(None, f"{W.ndim}-D tensor: no matrix spectrum")
    m, n = W.shape
    if min(m, n) < MIN_DIM:
        return SNR(None, f"{m}x{n} matrix: too small for a spectrum (needs at least {MIN_DIM}x{MIN_DIM})")
    if not _all_finite(W):
        return SNR(None, "weights contain NaN or Inf")
    S, rtol = singular_values(W, method, device, path)
    return snr_from_singular_values(S, (m, n), rtol, keep=True)


def score_batch(Ws, method: str = DEFAULT_METHOD, device=None, path: str = "gram64") -> list[SNR]:
    """The SNR of each matrix of WS (a [B, m, n] stack or a list of same-shape matrices), in order.

    One batched Gram and one batched ``eigvalsh`` (or ``svdvals``) for the matrices that can be scored;
    the others get their reason exactly as :func:`score` gives it. On the CPU the result is bit-identical to
    scoring them one by one (each Gram is :func:`gram`'s, LAPACK's batched eigvalsh loops over the same
    routine); on a GPU the stacked product may sum in another order: ~1e-15 relative (docs/devices-gpu.md).
    """
    if not isinstance(Ws, torch.Tensor):
        Ws = torch.stack(list(Ws)) if len(Ws) else torch.empty((0, 0, 0))
    if Ws.ndim != 3:
        raise ValueError(f"score_batch takes a [B, m, n] stack, not a {Ws.ndim}-D tensor")
    B, m, n = Ws.shape
    if B == 0:
        return []
    if min(m, n) < MIN_DIM:
        return [score(W, method, device, path) for W in Ws]
    if Ws.numel() <= CHUNK_ELEMENTS and not (Ws.is_floating_point() and Ws.element_size() == 1):
        finite = torch.isfinite(Ws).flatten(1).all(1).tolist()  # one check for a stack of small matrices
    else:
        finite = [_all_finite(W) for W in Ws]
    keep = [i for i, ok in enumerate(finite) if ok]
    out: list[SNR] = [SNR(None, "weights contain NaN or Inf")] * B
    if not keep:
        return out
    stack = Ws if len(keep) == B else Ws[keep]
    if method == "gram64":
        on_cpu = device is None or torch.device(device).type == "cpu"
        # on the CPU each Gram is gram()'s own, bit for bit (score()'s); only eigvalsh is batched
        G = _small_grams(stack) if on_cpu else gram_batch(stack, device)
        eig = eigenvalues(G, path)
        del G
        S_all = torch.sqrt(torch.clamp(eig, min=0)).flip(-1)
    elif method in ("svdvals32", "svdvals64"):
        dtype = torch.float32 if method == "svdvals32" else torch.float64
        S_all = torch.linalg.svdvals(stack.to(device=device, dtype=dtype)).cpu()
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    rtol = rank_floor(method, (m, n))
    for j, i in enumerate(keep):
        out[i] = snr_from_singular_values(S_all[j], (m, n), rtol, keep=True)
    return out


def _all_finite(W: torch.Tensor) -> bool:
    """Chunk by chunk; 8-bit floats (plain FP8 casts) are upcast per chunk, torch has no isfinite for them."""
    step = max(1, CHUNK_ELEMENTS // max(W.shape[1], 1))
    upcast = W.is_floating_point() and W.element_size() == 1
    if W.shape[0] <= step:
        return bool(torch.isfinite(W.float() if upcast else W).all())
    return all(
        bool(torch.isfinite(W[r : r + step].float() if upcast else W[r : r + step]).all())
        for r in range(0, W.shape[0], step)
    )
