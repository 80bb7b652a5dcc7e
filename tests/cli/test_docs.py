"""The docs stay true to the command line: docs/cli.md is its --help, every command shows an example, the
README fits on a screen with its two quick-start commands, and `streamscan --help` imports neither torch nor
the library (how fast it answers is bench's business, not a test's)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamscan.cli import main
from streamscan.cli.docs import REGENERATE, cli_markdown, commands

ROOT = Path(__file__).resolve().parents[2]
QUICK_START = ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_cli_page_is_the_help_of_every_command():
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == cli_markdown(), f"docs/cli.md is stale; regenerate it: {REGENERATE}"


def test_cli_page_covers_every_command():
    listed = [line for line, _ in commands()]
    assert listed == ["streamscan", *(f"streamscan {name}" for name in sorted(main.commands))]
    assert {"run", "inspect", "status", "select", "merge", "report"} <= set(main.commands)


@pytest.mark.parametrize("command", [line for line, _ in commands()])
def test_every_help_shows_an_example(command):
    text = dict(commands())[command]
    example = text.split("Example:", 1)
    assert len(example) == 2, f"`{command} --help` has no 'Example:'"
    assert "streamscan " in example[1].split("Options:")[0], f"`{command} --help`: the example runs nothing"


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_readme_fits_on_a_screen_with_two_quick_start_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    blocks = re.findall(r"```bash\n(.*?)```", _section(text, "Quick start"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert lines == QUICK_START
    for line in lines:
        assert (ROOT / line.split()[-1]).is_file()


def test_readme_and_docs_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def _run(*code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", *code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    )


def test_help_imports_neither_torch_nor_the_library():
    code = (
        "import sys; from streamscan.cli import main\n"
        "try: main(['--help'], prog_name='streamscan')\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'streamscan.pipeline', 'streamscan.compute') if m in sys.modules))"
    )
    assert _run(code).stdout.strip().splitlines()[-1] == "[]"


def test_readme_tour_runs_on_the_demos_outputs_with_a_time_per_step():
    tour = re.findall(r"```bash\n(.*?)```", _section((ROOT / "README.md").read_text(), "Tour"), flags=re.S)
    lines = [line for block in tour for line in block.splitlines() if line.strip()]
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert lines[0].startswith("gguf=$(") and lines[0][len("gguf=") :] in demo  # the file the demo installed
    made = {"demo_scan"}  # what scripts/demo.sh writes
    assert "--out demo_scan" in demo
    shown = set()
    for line in lines[1:]:
        command, _, comment = line.partition("#")
        words = command.split()
        assert words[0] == "streamscan" and words[1] in main.commands, line
        assert re.match(r" *\d+ s: ", comment), f"no duration: {line}"
        shown.add(words[1])
        dirs = [w for i, w in enumerate(words) if words[i - 1] == "--out" or (words[1] == "compare" and i in (2, 3))]
        if words[1] == "run":
            made.update(dirs)
        assert set(dirs) <= made, f"{line}: a directory the demo and the tour did not create"
    assert {"inspect", "status", "select", "run", "metrics", "report", "compare"} <= shown
