"""The benchmark registry: ``distill-diffusion bench NAME`` → the module that runs it, imported lazily.

One rule places every benchmark: a method's benchmarks are ``bench_<kind>.py`` modules (kind: speed, gpu, toy, ...)
in the method's own package, declared by kind in its entry of the method registry
(:class:`~distill_diffusion.trainers.methods.registry.MethodEntry`), so a new method adds a benchmark without
editing the CLI; a benchmark shared by methods, or of no method, is a module of this package, listed in
:data:`GENERIC`. Each benchmark is one module exposing ``HELP: str``, ``add_arguments(parser)`` and
``run(args) -> int``, and it imports torch (and the project modules that import torch) only inside its functions:
the CLI imports every one to build ``--help``. The other modules here (``options``, ``timing``, ``gpu``,
``toy_runs``, ``step_bars``) are the parts benchmarks share.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.registry import METHODS

#: Benchmarks of no single method: name → module.
GENERIC: dict[str, str] = {
    "engine": "distill_diffusion.bench.engine",
    "quality": "distill_diffusion.bench.quality",
    "threads": "distill_diffusion.bench.threads",
    "methods": "distill_diffusion.bench.methods",
    "lora-memory": "distill_diffusion.bench.memory",
    "train-memory": "distill_diffusion.bench.train_memory",
    "sdxl-gpu": "distill_diffusion.bench.sdxl_gpu",
}


def benchmarks() -> dict[str, str]:
    """Every benchmark: the generic ones, then each method's; a name declared twice is a programming error."""
    found = dict(GENERIC)
    for method, entry in METHODS.items():
        for name, module in entry.benchmark_modules().items():
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
