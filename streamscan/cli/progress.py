"""progress: what `run` shows while it scans: a tqdm bar on a terminal, else (a log file, CI) one line every
LOG_SECONDS (DESIGN.md: "when not a TTY, progress as a log line every few seconds"); nothing with --quiet."""

from __future__ import annotations

import sys
import time

import click

from streamscan.cli.render import duration

LOG_SECONDS = 5.0  # between two progress lines when stderr is not a terminal
REDRAW_SECONDS = 0.5  # between two rebuilds of the bar's postfix


class Progress:
    """The ``progress`` callback of ``streamscan.scan``: (result, done, total, bytes read this run)."""

    def __init__(self, slots: dict[str, int], quiet: bool, tty: bool | None = None):
        self.slots = slots
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        self.busy: dict[str, float] = {}
        self.started = time.monotonic()
        self.first: int | None = None  # matrices done before this run (resumed from the journal)
        self.shown = 0.0  # when the postfix was last rebuilt, or the last line logged
        self.logged = self.started

    def __call__(self, result, done: int, total: int, read_bytes: int) -> None:
        if self.bar is None and self.tty and not self.quiet:
            from tqdm import tqdm

            # at 70k matrices a result comes every ~0.1 ms: the bar redraws and its postfix is rebuilt at
            # most twice a second, and the rate is smoothed over many results so the ETA stays steady
            self.bar = tqdm(
                total=total, initial=done - 1, unit="matrix", dynamic_ncols=True, mininterval=0.5, smoothing=0.05
            )
        if self.first is None:
            self.first = done - 1
        device = "cpu" if result.worker.startswith("cpu") else result.worker
        self.busy[device] = self.busy.get(device, 0.0) + result.seconds
        now = time.monotonic()
        if self.bar is not None:
            if now - self.shown >= REDRAW_SECONDS or done == total:
                self.shown = now
                self.bar.set_postfix_str(self._rates(read_bytes, now), refresh=False)
            self.bar.update(1)
        elif not self.quiet and (now - self.logged >= LOG_SECONDS or done == total):
            self.logged = now
            click.echo(f"streamscan: {self._line(done, total, now)}, {self._rates(read_bytes, now)}", err=True)
        if result.status == "error":
            self.write(f"streamscan: {result.name}: {result.reason}")

    def _rates(self, read_bytes: int, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        use = " ".join(f"{d} {100 * b / elapsed / self.slots.get(d, 1):.0f}%" for d, b in self.busy.items())
        return f"{read_bytes / elapsed / 1e9:.2f} GB/s, busy: {use}"

    def _line(self, done: int, total: int, now: float) -> str:
        elapsed = now - self.started
        this_run = done - (self.first or 0)
        left = f", ~{duration(elapsed / this_run * (total - done))} left" if this_run and done < total else ""
        return f"{done}/{total} matrices ({100 * done / total:.0f}%), {duration(elapsed)}{left}"

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
