"""streamscan: Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time.

The public API is listed in ``__all__``; each name is imported on first use, so ``import streamscan`` (and
``streamscan --help``) does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from streamscan._version import __version__

_EXPORTS = {
    "streamscan.api": (
        "scan",
        "merge",
        "ScanResult",
        "select",
        "status",
        "load_results",
        "inspect_model",
        "moe_report",
        "metrics",
        "report",
        "compare",
    ),
    "streamscan.compute.spectrum": ("score", "snr_from_singular_values", "SNR", "METHODS"),
    "streamscan.training.apply": ("apply_selection", "trainable_summary", "TrainableSummary", "sync_optimizer"),
    "streamscan.training.rescan": ("score_model", "rescan", "Rescan"),
    "streamscan.training.lr": ("snr_param_groups",),
    "streamscan.training.callback": ("SelectionSchedule", "SpectrumCallback"),
    "streamscan.results.selection": ("Selection", "select_top", "rank_by_type"),
    "streamscan.records": (
        "Result",
        "ExpertRow",
        "ScanOptions",
        "ScanHeader",
        "ScanSummary",
    ),
    "streamscan.errors": (
        "StreamscanError",
        "SourceError",
        "CheckpointError",
        "JournalError",
        "OutputError",
        "UsageError",
        "DistributedError",
        "SelectionError",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streamscan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from streamscan.api import (  # noqa: F401
        ScanResult,
        compare,
        inspect_model,
        load_results,
        merge,
        metrics,
        moe_report,
        report,
        scan,
        select,
        status,
    )
    from streamscan.compute.spectrum import METHODS, SNR, score, snr_from_singular_values  # noqa: F401
    from streamscan.errors import (
        CheckpointError,
        DistributedError,
        JournalError,
        OutputError,
        SelectionError,  # noqa: F401
        SourceError,
        StreamscanError,
        UsageError,
    )
    from streamscan.records import ExpertRow, Result, ScanHeader, ScanOptions, ScanSummary  # noqa: F401
    from streamscan.results.selection import Selection, rank_by_type, select_top  # noqa: F401
    from streamscan.training.apply import TrainableSummary, apply_selection, sync_optimizer, trainable_summary  # noqa: F401
    from streamscan.training.callback import SelectionSchedule, SpectrumCallback  # noqa: F401
    from streamscan.training.lr import snr_param_groups  # noqa: F401
    from streamscan.training.rescan import Rescan, rescan, score_model  # noqa: F401
