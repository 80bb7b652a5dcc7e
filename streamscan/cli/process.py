"""process: what the command line does to the whole process, once per invocation, before a command runs
(team decision D4: process-wide effects and environment variables only at the CLI edge, never in the library).

``entry()`` wraps every invocation (the ``streamscan`` console script and ``python -m streamscan`` alike):
Ctrl-C and SIGTERM end the process with one line and exit 130/143, the handlers restored afterwards (so a
test's ``CliRunner`` leaves its process as it found it). ``ENVIRONMENT`` lists every variable the command
line reads or passes on; docs/cli.md shows it.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from streamscan.cli.options import on_signal

ENVIRONMENT = {
    "HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE": "Hub models: read by huggingface_hub itself "
    "(the cache, the token for gated repos, a mirror, offline mode as --offline).",
    "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT": "Set by torchrun: `run` splits the scan over the ranks "
    "(--distributed, docs/multi-node.md).",
    "SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID": "Set by srun: the same with `run --distributed`.",
    "CUDA_VISIBLE_DEVICES": "The GPUs `--devices auto` sees (read by torch).",
}


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
