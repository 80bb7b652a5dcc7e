"""options: the command line's shared options, declared once (one help text each), and its error handling.

Nothing heavy is imported here: ``streamscan --help`` must not wait for torch.
"""

from __future__ import annotations

import contextlib
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


def usage_line(err: click.ClickException) -> str:
    """Click's own error (a bad option value, a missing argument, an unknown option) as our one line: the
    message, then where to read the usage."""
    message = " ".join(err.format_message().split()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


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
        click.echo(f"streamscan: interrupted: {kept(out)} results kept; rerun the same command to resume", err=True)
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
PERCENT = click.FloatRange(0, 100, min_open=True)


def top_percent(help: str, required: bool = False):
    """``-p/--top-percent N``: repeatable in every command that takes it, each in (0, 100], checked by click
    before anything runs."""
    return click.option("--top-percent", "-p", type=PERCENT, multiple=True, required=required, metavar="N", help=help)


TOP_PERCENT = top_percent("Write an unfrozen-parameters YAML for this percent per type (repeatable).")
INCLUDE = click.option("--include", multiple=True, help="Only modules matching this glob (repeatable), e.g. '*mlp*'.")
EXCLUDE = click.option("--exclude", multiple=True, help="Skip modules matching this glob (repeatable).")
REVISION = click.option("--revision", default=None, help="Hub models: branch, tag or commit [default: main].")
OFFLINE = click.option(
    "--offline", is_flag=True, default=None, help="Hub models: the HF cache only (as HF_HUB_OFFLINE=1)."
)


def workers(help: str):
    """``--workers N`` (one name for the worker count everywhere; ``--cpu-workers``, its old name in `run` and
    `inspect`, still works, hidden, with a note)."""

    def wrap(func):
        @functools.wraps(func)
        def wrapper(*args, workers=None, cpu_workers=None, **kwargs):
            if cpu_workers is not None:
                click.echo("streamscan: --cpu-workers is deprecated; use --workers", err=True)
                workers = cpu_workers if workers is None else workers
            return func(*args, workers=workers, **kwargs)

        wrapper = click.option("--cpu-workers", type=click.IntRange(min=1), default=None, hidden=True)(wrapper)
        return click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N", help=help)(wrapper)

    return wrap


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


def dest(default: str):
    """``--dest/-d DIR``: where a command that reads a scan writes its files."""
    return click.option("--dest", "-d", default=None, metavar="DIR", help=f"Write the files here [default: {default}].")


def check_run(model: str, out: str, devices: str, max_memory, max_disk, shard) -> None:
    """`run`'s options, checked before torch is imported (seconds), so a typo is answered at once."""
    from pathlib import Path

    from streamscan.checkpoint.hub import looks_like_repo_id
    from streamscan.compute.devices import parse_devices, parse_size
    from streamscan.distributed import parse_shard
    from streamscan.errors import UsageError
    from streamscan.results.files import prepare_dir

    if not Path(model).expanduser().exists() and not looks_like_repo_id(str(model)):
        raise UsageError(
            f"{model}: no such file or directory; give a checkpoint directory, a .safetensors, .gguf or .bin "
            "file, or a Hub id (org/name)"
        )
    parse_devices(devices, gpus=1 << 16)  # the spelling; whether those GPUs exist needs torch (checked later)
    parse_size(max_memory)
    parse_size(max_disk, "--max-disk")
    if shard is not None:
        parse_shard(shard)
    prepare_dir(out)  # the library's own check (a file, a parent that is a file, read-only): made now


def _created(path) -> tuple:
    """(PATH, the outermost of its directories that does not exist yet) or () if PATH exists."""
    from pathlib import Path

    path = Path(path).absolute()
    top = None
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        top = p
    return (path, top) if top is not None else ()


def creates(*names: str):
    """The command may create the directories given as options NAMES (``--out``, ``--dest``): if it fails,
    those it created are removed again while empty (never one that was there before, never one with a file)."""

    def wrap(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            new = [c for c in (_created(kwargs[n]) for n in names if kwargs.get(n) is not None) if c]
            try:
                return func(*args, **kwargs)
            except BaseException:
                for path, top in new:
                    for inner, _, _ in os.walk(path, topdown=False):  # PATH and the empty folders within
                        with contextlib.suppress(OSError):
                            os.rmdir(inner)  # only an empty directory; a link or a file is left alone
                    for p in path.parents if path != top and not path.exists() else ():
                        try:
                            os.rmdir(p)
                        except OSError:
                            break
                        if p == top:
                            break
                raise

        return wrapper

    return wrap
