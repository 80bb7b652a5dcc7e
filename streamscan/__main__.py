import os
import signal
import sys


def _starting(signum, frame):  # Ctrl-C or SIGTERM before the command runs: nothing was done yet
    sys.stderr.write("interrupted: 0 results kept; rerun the same command to resume\n")
    os._exit(143 if signum == signal.SIGTERM else 130)


signal.signal(signal.SIGINT, _starting)
signal.signal(signal.SIGTERM, _starting)

from streamscan.cli import main  # noqa: E402 - after the handlers: importing takes a while

main(prog_name="streamscan")
