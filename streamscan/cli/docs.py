"""docs: docs/cli.md, generated from every command's ``--help`` (``python -m streamscan.cli.docs > docs/cli.md``).

The help is rendered at a fixed width, so the page does not depend on the terminal it was made in;
tests/cli/test_docs.py fails when the page in the repository is stale.
"""

from __future__ import annotations

import click

from streamscan.cli.commands import main
from streamscan.cli.process import ENVIRONMENT

WIDTH = 108  # what click renders on a wide terminal: the commands' max_content_width (110) minus 2
REGENERATE = "python -m streamscan.cli.docs > docs/cli.md"


def help_text(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    """COMMAND's --help as `streamscan [NAME] --help` prints it on a wide terminal (112 columns or more)."""
    settings = {**command.context_settings, "terminal_width": WIDTH}
    ctx = command.context_class(command, info_name=name, parent=parent, **settings)
    return command.get_help(ctx)


def commands() -> list[tuple[str, str]]:
    """(command line, help text) for `streamscan` and each of its commands, in the order --help lists them."""
    root = main.context_class(main, info_name="streamscan", **{**main.context_settings, "terminal_width": WIDTH})
    pages = [("streamscan", main.get_help(root))]
    for name in main.list_commands(root):
        pages.append((f"streamscan {name}", help_text(main.get_command(root, name), name, root)))
    return pages


def cli_markdown() -> str:
    lines = [
        "# Command line",
        "",
        f"Generated from each command's `--help` by `{REGENERATE}`; do not edit by hand.",
        "",
    ]
    for command, text in commands():
        lines += [f"## `{command}`", "", "```text", text.rstrip(), "```", ""]
    lines += [
        "## Environment variables",
        "",
        "The command line reads these (streamscan/cli/process.py) and hands them to the library as `ScanOptions`",
        "fields or process-wide settings of `run`; every other setting is an option above.",
        "",
        "| variable | what it does |",
        "|---|---|",
        *(f"| `{name}` | {what} |" for name, what in ENVIRONMENT.items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    click.echo(cli_markdown(), nl=False)
