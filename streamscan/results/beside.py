"""beside: an output written by a forked child process while this process writes the others.

At 70k matrices the per-expert CSV and HTML of an MoE scan cost as much as every other output together, and
they need nothing the others make: on a machine with a second core a `merge` (or `report`) writes them in a
child forked with the results already in memory (copy-on-write, nothing pickled) and waits for it at the
end. Only where forking is safe: Linux, and no other thread in this process (a fork copies only the
calling thread; a lock another thread held would stay locked in the child). Anywhere else, or with
``STREAMSCAN_NO_FORK=1``, the work runs here, in order. If the child fails for any reason, the work is
done again here, so its error is raised in this process with its own message, and nothing is lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


def can_fork() -> bool:
    return (
        sys.platform == "linux"
        and hasattr(os, "fork")
        and threading.active_count() == 1
        and os.environ.get("STREAMSCAN_NO_FORK", "") in ("", "0")
        and (os.cpu_count() or 1) > 1
    )


def beside(work: Callable[[], object]) -> Callable[[], None]:
    """Start WORK (a function that writes files) in a forked child, or run it now where forking is not safe;
    returns ``wait``, which returns once WORK's files are written (running WORK here if the child failed)."""
    if not can_fork():
        work()
        return lambda: None
    sys.stdout.flush()
    sys.stderr.flush()  # nothing buffered is written twice
    pid = os.fork()
    if pid == 0:  # the child: WORK, then out without the parent's exit handlers or buffers
        code = 1
        try:
            work()
            code = 0
        except BaseException:  # noqa: BLE001 (the parent redoes WORK and raises its error)
            pass
        finally:
            os._exit(code)
    reaped = False

    def wait() -> None:
        nonlocal reaped
        try:
            _, status = os.waitpid(pid, 0)
            reaped = True
        finally:
            if not reaped:  # interrupted while waiting: the child must not outlive us
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                reaped = True
        if os.waitstatus_to_exitcode(status) != 0:
            work()

    return wait
