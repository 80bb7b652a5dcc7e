"""streamscan: Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time."""
__version__ = "0.1.0"

from .errors import (CheckpointError, DistributedError, JournalError, SelectionError, SourceError,  # noqa: E402
                     StreamscanError, UsageError)
from .scan import ScanResult, inspect_model, load_results, merge, moe_report, scan, select, status  # noqa: E402
from .spectrum import METHODS, SNR, score, snr_from_singular_values  # noqa: E402
from .train import (Rescan, TrainableSummary, apply_selection, rescan, score_model, snr_param_groups,  # noqa: E402
                    trainable_summary)

__all__ = [
    "__version__", "scan", "merge", "select", "status", "load_results", "inspect_model", "moe_report", "ScanResult",
    "score", "snr_from_singular_values", "SNR", "METHODS",
    "apply_selection", "trainable_summary", "TrainableSummary", "score_model", "rescan", "Rescan", "snr_param_groups",
    "StreamscanError", "SourceError", "CheckpointError", "JournalError", "UsageError", "DistributedError",
    "SelectionError",
]
