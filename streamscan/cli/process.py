"""process: what the command line does to the whole process, once per invocation, before a command runs
(team decision D4: process-wide effects and environment variables only at the CLI edge, never in the library).

``entry()`` wraps every invocation (the ``streamscan`` console script and ``python -m streamscan`` alike):
Ctrl-C and SIGTERM end the process with one line and exit 130/143, the handlers restored afterwards (so a
test's ``CliRunner`` leaves its process as it found it). ``ENVIRONMENT`` lists every variable the command
line reads or passes on; docs/cli.md shows it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Mapping

from streamscan.cli.options import on_signal

SCAN_VARIABLES = {  # variable -> (ScanOptions field, its type, what it does): `run` passes them as options
    "STREAMSCAN_COMMIT_RECORDS": ("commit_records", int, "The journal commits (writes and fsyncs) a batch once it "
                                  "holds this many records [256]; 1: every record on disk as it finishes."),
    "STREAMSCAN_COMMIT_SECONDS": ("commit_seconds", float, "The journal also commits once its oldest record "
                                  "waited this many seconds [0.5]."),
    "STREAMSCAN_SOLVER": ("solver", str, "Force one gram64 solver path on every device (gram64, gram64-host-eig; "
                          "checks and benchmarks) [chosen per device]."),
    "STREAMSCAN_PIECES_ABOVE": ("pieces_above", int, "Bytes as stored above which a matrix is read in pieces [1 GiB]."),
    "STREAMSCAN_THREADS_PER_JOB": ("threads_per_job", int, "torch threads per CPU job [1]; e.g. the core count to "
                                   "match a reference run's last bits (docs/reproducibility.md)."),
}  # fmt: skip
PROCESS_VARIABLES = {  # variable -> what it does to the whole process (set once, by `run`, before the scan)
    "STREAMSCAN_CUDA_LINALG": "torch.backends.cuda.preferred_linalg_library for the scan: cusolver or magma "
    "[torch's default].",
}
ENVIRONMENT = {
    **{name: what for name, (_, _, what) in SCAN_VARIABLES.items()},
    **PROCESS_VARIABLES,
    "HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE": "Hub models: read by huggingface_hub itself "
    "(the cache, the token for gated repos, a mirror, offline mode as --offline).",
    "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT": "Set by torchrun: `run` splits the scan over the ranks "
    "(--distributed, docs/multi-node.md).",
    "SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID": "Set by srun: the same with `run --distributed`.",
    "CUDA_VISIBLE_DEVICES": "The GPUs `--devices auto` sees (read by torch).",
}


def scan_settings(environ: Mapping[str, str] = os.environ) -> dict:
    """The ScanOptions fields that STREAMSCAN_* variables set (those this version of ScanOptions has)."""
    from streamscan.errors import UsageError
    from streamscan.records import ScanOptions

    known = set(ScanOptions.names())
    found = {}
    for variable, (field, kind, _) in SCAN_VARIABLES.items():
        value = environ.get(variable, "").strip()
        if value and field in known:
            try:
                found[field] = kind(value)
            except ValueError:
                raise UsageError(f"{variable}={value}: not a {kind.__name__}; unset it or correct it") from None
    return found


def before_scan(environ: Mapping[str, str] = os.environ) -> None:
    """Process-wide settings for a scan, made once by `run` after its options are checked (torch is loaded):
    glibc returns freed tensor buffers above 1 MiB to the system at once (M_MMAP_THRESHOLD, fixed rather than
    growing, so the resident size follows the memory budget); STREAMSCAN_CUDA_LINALG."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    library = environ.get("STREAMSCAN_CUDA_LINALG", "").strip()
    if library:
        import torch

        try:
            torch.backends.cuda.preferred_linalg_library(library)
        except (RuntimeError, ValueError) as err:
            from streamscan.errors import UsageError

            raise UsageError(f"STREAMSCAN_CUDA_LINALG={library}: {err}; use cusolver or magma") from None


@contextlib.contextmanager
def entry():
    """Signal handlers for one invocation, restored when it ends."""
    restore = []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            restore.append((signum, signal.signal(signum, on_signal)))
    try:
        yield
    finally:
        for signum, previous in restore:
            signal.signal(signum, previous)
