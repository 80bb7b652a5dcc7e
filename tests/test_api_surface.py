"""The public surface: every name in ``streamscan.__all__`` is what it says, whatever submodules are imported."""

import importlib
import pkgutil
import types

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
