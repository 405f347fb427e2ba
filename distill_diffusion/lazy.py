"""Lazy package exports (PEP 562): a method package names its classes without importing torch until one is used.

The CLI imports every method's benchmark modules (``bench_<kind>``, torch-free at import) to build ``--help``;
importing those imports their package's ``__init__``, which therefore must not import the method itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each exported name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
