"""_aliases: the import paths of streamscan 0.1 (a flat package), kept working.

``import streamscan.train`` or ``from streamscan.scan import scan`` gives a module that looks each name up
in the modules that now hold it. Nothing is imported until such a path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

OLD = {
    "streamscan.scan": ("streamscan.pipeline", "streamscan.api", "streamscan.results.scan_outputs"),
    "streamscan.train": (
        "streamscan.training.apply",
        "streamscan.training.rescan",
        "streamscan.training.lr",
        "streamscan.training.callback",
        "streamscan.training.match",
    ),
    "streamscan.select": ("streamscan.results.selection",),
    "streamscan.report": ("streamscan.results.outputs", "streamscan.results.files"),
    "streamscan.moe_report": ("streamscan.results.moe_report",),
    "streamscan.journal": ("streamscan.results.journal",),
    "streamscan.overview": ("streamscan.results.overview",),
    "streamscan.spectrum": ("streamscan.compute.spectrum",),
    "streamscan.devices": ("streamscan.compute.devices",),
    "streamscan.placement": ("streamscan.compute.placement",),
    "streamscan.scheduler": ("streamscan.compute.scheduler",),
    "streamscan.plan": ("streamscan.planning.plan", "streamscan.records"),
    "streamscan.moe": ("streamscan.planning.experts", "streamscan.records"),
    "streamscan.quant": ("streamscan.planning.quant",),
    "streamscan.index": (
        "streamscan.checkpoint.index",
        "streamscan.checkpoint.formats.safetensors",
        "streamscan.records",
    ),
    "streamscan.source": ("streamscan.checkpoint.source",),
    "streamscan.hub": ("streamscan.checkpoint.hub",),
    "streamscan.shards": ("streamscan.checkpoint.shards",),
    "streamscan.reader": ("streamscan.checkpoint.reader",),
    "streamscan.dequant": ("streamscan.checkpoint.dequant",),
    "streamscan.formats": ("streamscan.checkpoint.formats.gguf", "streamscan.checkpoint.formats.torch_zip"),
}


# 0.1's package rebound these module names to functions of the same name: the alias modules are callable.
CALLS = {
    "streamscan.scan": ("streamscan.pipeline", "scan"),
    "streamscan.select": ("streamscan.api", "select"),
    "streamscan.moe_report": ("streamscan.api", "moe_report"),
}


class _Alias(types.ModuleType):
    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"streamscan 0.1's {name}, now in {', '.join(targets)}")
        self.__targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __call__(self, *args, **kwargs):
        if self.__name__ not in CALLS:
            raise TypeError(f"module {self.__name__!r} is not callable")
        module, name = CALLS[self.__name__]
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    def __dir__(self) -> list[str]:
        return sorted({n for t in self.__targets for n in dir(importlib.import_module(t))})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return _Alias(spec.name, OLD[spec.name])

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
