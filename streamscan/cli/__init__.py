"""cli: the ``streamscan`` command, a thin layer over the library (options.py, commands.py, render.py)."""

from streamscan.cli.commands import main

__all__ = ["main"]
