"""lr: SNR-guided learning rates per parameter group (experimental)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from streamscan.api import load_results
from streamscan.errors import SelectionError, UsageError
from streamscan.results.selection import rank_by_type

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- SNR-guided rates


def snr_param_groups(
    model: torch.nn.Module,
    results,
    lr: float,
    *,
    min_scale: float = 0.5,
    max_scale: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict]:
    """EXPERIMENTAL. Optimizer parameter groups whose learning rate follows the module's SNR rank in its type.

    Among the *trainable* scored modules of one type, sorted by descending SNR (rank r = 0 … n-1)::

        scale(r) = max_scale - (max_scale - min_scale) * r / (n - 1)     (n = 1: scale = max_scale)
        lr(module) = lr * scale(r)

    so the highest-SNR module of each type trains at ``lr * max_scale`` and the lowest selected one at
    ``lr * min_scale``, linearly in rank between. A module's weight and bias share its scale; trainable
    parameters without an SNR (norms, unscored modules) get ``lr`` (scale 1). Matrices get
    ``weight_decay``, vectors 0. RESULTS: a scan directory, or Results (``score_model``, ``load_results``).
    Each group carries ``scale`` and ``names``; pass the list to any torch optimizer. A parameter that
    trains in part (a fused expert tensor of which some experts are selected) has its gradient masked;
    call ``mask_optimizer(optimizer)`` once the optimizer is
    built (``SpectrumCallback`` does): the frozen slices then stay bit-identical under weight decay.
    """
    if not 0 < min_scale <= max_scale:
        raise UsageError(f"scales: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    if isinstance(results, (str, Path)):
        results = load_results(results)[1]
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    modules = {n.rpartition(".")[0] for n in trainable}
    scales: dict[str, float] = {}
    for members in rank_by_type(r for r in results if r.name in modules).values():
        n = len(members)
        for rank, r in enumerate(members):
            scales[r.name] = max_scale if n == 1 else max_scale - (max_scale - min_scale) * rank / (n - 1)
    if trainable and not scales:
        raise SelectionError(
            "snr_param_groups: the results name none of the model's trainable modules; "
            "apply a selection first, and scan this model (or score_model it)"
        )
    groups: dict[tuple[float, float], dict] = {}
    for name, p in trainable.items():
        scale = scales.get(name.rpartition(".")[0], 1.0)
        decay = weight_decay if p.ndim >= 2 else 0.0
        g = groups.setdefault(
            (scale, decay), {"params": [], "names": [], "lr": lr * scale, "weight_decay": decay, "scale": scale}
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], -k[1]))]
