"""streamscan: Spectrum SNR of every weight matrix of a checkpoint, streamed one tensor at a time."""
__version__ = "0.1.0"

from .errors import CheckpointError, DistributedError, JournalError, SourceError, StreamscanError, UsageError  # noqa: E402
from .scan import ScanResult, inspect_model, load_results, merge, scan, select, status  # noqa: E402
from .spectrum import METHODS, SNR, score, snr_from_singular_values  # noqa: E402

__all__ = [
    "__version__", "scan", "merge", "select", "status", "load_results", "inspect_model", "ScanResult",
    "score", "snr_from_singular_values", "SNR", "METHODS",
    "StreamscanError", "SourceError", "CheckpointError", "JournalError", "UsageError", "DistributedError",
]
