"""The public surface: every name in ``streamscan.__all__`` is what it says, whatever submodules are imported."""

import importlib
import pkgutil
import re
import types
from pathlib import Path

import streamscan


def test_no_public_name_is_shadowed_by_a_submodule():
    # importing streamscan.X binds X on the package: a public name equal to a submodule's would be replaced
    submodules = {m.name for m in pkgutil.iter_modules(streamscan.__path__)}
    assert submodules and not submodules & set(streamscan.__all__)
    for name in streamscan.__all__:
        assert not isinstance(getattr(streamscan, name), types.ModuleType), name
    api = importlib.import_module("streamscan.api")
    importlib.import_module("streamscan.results.report")
    assert streamscan.report is api.report and callable(streamscan.report)


def _documented() -> set[str]:
    """The names docs/api.md documents: the first cell of each table row (a name, or a call of it)."""
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return {m for cell in rows for m in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)[(`]", cell)}


def test_docs_api_md_documents_exactly_the_public_names():
    assert _documented() == set(streamscan.__all__)


def test_docs_api_md_names_every_scan_option():
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    section = text[text.index("`ScanOptions` fields") :]
    assert [n for n in streamscan.ScanOptions.names() if f"`{n}`" not in section] == []
