"""options: the command line's shared options, declared once (one help text each), and its error handling.

Nothing heavy is imported here: ``streamscan --help`` must not wait for torch.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys

import click

from streamscan.records import DEFAULT_METHOD, DEFAULT_OUT, DEFAULT_RANK_TIMEOUT, GROUPINGS, METHODS


def fail(message: str, code: int) -> None:
    click.echo(f"streamscan: error: {message}", err=True)
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kept for callers that raise it; the CLI's handler exits directly)."""


def on_signal(signum, frame) -> None:
    """Ctrl-C and SIGTERM in the CLI: one line and exit now, from the handler itself. Raising
    KeyboardInterrupt instead can be swallowed, or abort the process inside a C++ callback (torch import)."""
    interrupted(143 if signum == signal.SIGTERM else 130)


def kept(out) -> int:
    """How many finished results the journals in OUT hold (for the interrupt line); 0 if none can be read."""
    if not out:
        return 0
    try:
        from streamscan.results.journal import read_journals

        _, results = read_journals(out)
    except Exception:  # noqa: BLE001 - only a count for a message
        return 0
    return sum(1 for r in results.values() if r.status != "error")


def interrupted(code: int) -> None:
    """One line, then exit now: SVDs still running in worker threads are not waited for (the journal
    already holds every finished record)."""
    try:
        ctx = click.get_current_context(silent=True)
        out = ctx.params.get("out") if ctx is not None else None
        click.echo(f"interrupted: {kept(out)} results kept; rerun the same command to resume", err=True)
        sys.stderr.flush()
    finally:
        os._exit(code)


def os_failure(err: OSError) -> str:
    """An environment error the library did not name (a full disk, a read-only directory) as one line."""
    where = err.filename or "streamscan"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on device; free some space and rerun the same command to resume"
    return f"{where}: {err.strerror or err}; check the path and its permissions, then rerun"


def friendly(func):
    """Map library errors to one line (exit 2) and unexpected ones to one line (exit 1) unless --debug.
    Ctrl-C exits 130 and SIGTERM 143, each after one line saying how many results are kept."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from streamscan.errors import StreamscanError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except StreamscanError as err:
            if debug:
                raise
            fail(str(err), 2)
        except Terminated:
            interrupted(143)
        except KeyboardInterrupt:
            interrupted(130)
        except OSError as err:
            if debug:
                raise
            fail(os_failure(err), 2)
        except Exception as err:  # noqa: BLE001 - the CLI edge
            if debug:
                raise
            fail(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)

    return wrapper


def scan_dir(func):
    """The scan directory: ``--out/-o DIR`` on every command (a positional DIR is accepted too, as before)."""
    func = click.argument("out_arg", metavar="[DIR]", required=False, default=None)(func)
    func = click.option(
        "--out",
        "-o",
        default=None,
        metavar="DIR",
        help=f"Scan directory (journal and outputs) [default: {DEFAULT_OUT}].",
    )(func)

    @functools.wraps(func)
    def wrapper(*args, out_arg=None, out=None, **kwargs):
        if out_arg is not None and out is not None and out_arg != out:
            raise click.UsageError(f"two scan directories ({out_arg} and --out {out}); give one")
        return func(*args, out=out or out_arg or DEFAULT_OUT, **kwargs)

    return wrapper


MOE_GROUPING = click.option(
    "--moe-grouping",
    type=click.Choice(GROUPINGS),
    default="reference",
    show_default=True,
    help="How MoE experts are ranked for the YAML. reference: per expert index across layers (the reference's "
    "type, e.g. experts.3.w1); pooled: all experts of a projection in all layers together; per-layer: the "
    "experts of each layer against each other (every MoE layer trains the same share of experts).",
)
TOP_PERCENT = click.option(
    "--top-percent",
    "-p",
    type=float,
    multiple=True,
    help="Write an unfrozen-parameters YAML for this percent per type (repeatable).",
)
INCLUDE = click.option("--include", multiple=True, help="Only modules matching this glob (repeatable), e.g. '*mlp*'.")
EXCLUDE = click.option("--exclude", multiple=True, help="Skip modules matching this glob (repeatable).")
REVISION = click.option("--revision", default=None, help="Hub models: branch, tag or commit [default: main].")
OFFLINE = click.option(
    "--offline", is_flag=True, default=None, help="Hub models: the HF cache only (as HF_HUB_OFFLINE=1)."
)
CPU_WORKERS = click.option(
    "--cpu-workers",
    type=click.IntRange(min=1),
    default=None,
    help="CPU matrices scored in parallel, one torch thread each [default: physical cores].",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
METHOD = click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="gram64: float64 Gram + eigvalsh (exact, fast); svdvals32: the reference's float32 SVD; svdvals64: float64 SVD.",
)
RANK_TIMEOUT = click.option(
    "--rank-timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_RANK_TIMEOUT,
    show_default=True,
    help="Seconds rank 0 waits at the end for the other ranks before naming the missing ones.",
)


def apply(*decorators):
    """Several option decorators as one."""

    def wrap(func):
        for d in reversed(decorators):
            func = d(func)
        return func

    return wrap


MODEL_SELECTION = apply(INCLUDE, EXCLUDE, REVISION, OFFLINE)
