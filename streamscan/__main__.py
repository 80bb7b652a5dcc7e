"""The entry point of the command line, ``streamscan`` and ``python -m streamscan`` alike (pyproject.toml).

Process-wide effects happen here and in cli/process.py, which wraps each invocation, never at import
(team decision D4). The first handlers cover the second it takes to load the command line itself.
"""

import os
import signal
import sys


def _starting(signum, frame):  # Ctrl-C or SIGTERM while the command line loads: nothing was done yet
    sys.stderr.write("streamscan: interrupted: 0 results kept; rerun the same command to resume\n")
    os._exit(143 if signum == signal.SIGTERM else 130)


def run() -> None:
    signal.signal(signal.SIGINT, _starting)
    signal.signal(signal.SIGTERM, _starting)
    from streamscan.cli import main

    main(prog_name="streamscan")


if __name__ == "__main__":
    run()
