"""The benchmark registry: ``distill-diffusion bench NAME`` → the module that runs it, imported lazily.

A benchmark module exposes ``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports
no torch at module level (the CLI imports every one to build ``--help``; torch-heavy work is imported in
``run``). Generic benchmarks are listed here; a method's benchmarks are declared in its entry of the
method registry, so a new method adds a benchmark without editing the CLI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.registry import METHODS

#: Benchmarks of no single method.
GENERIC: dict[str, str] = {
    "engine": "distill_diffusion.bench.engine_command",
    "quality": "distill_diffusion.bench.quality",
    "threads": "distill_diffusion.bench.threads",
}


def benchmarks() -> dict[str, str]:
    """Every benchmark: the generic ones, then each method's; a name declared twice is a programming error."""
    found = dict(GENERIC)
    for method, entry in METHODS.items():
        for name, module in entry.benchmarks.items():
            if name in found:
                raise ValueError(f"benchmark {name!r} of method {method!r} is already registered ({found[name]})")
            found[name] = module
    return found


def load_benchmark(name: str) -> ModuleType:
    """The module of benchmark ``name``; an unknown name fails with the list of valid ones."""
    registry = benchmarks()
    if name not in registry:
        raise UserError(f"unknown benchmark {name!r}; choose one of: {', '.join(sorted(registry))}")
    return importlib.import_module(registry[name])
