"""The method registry: method name → its class and its benchmarks. Adding a method is one entry here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from distill_diffusion.errors import UserError


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives, as import paths so that `distill-diffusion --help` imports nothing heavy.

    ``target``: ``"module:Class"``. ``benchmarks``: ``distill-diffusion bench`` subcommand name → kind; the benchmark
    is the module ``bench_<kind>`` of the method's own package (the module of ``target``), which exposes ``HELP``,
    ``add_arguments(parser)`` and ``run(args) -> int`` (see :mod:`distill_diffusion.bench.registry`).
    """

    target: str
    benchmarks: Mapping[str, str] = field(default_factory=dict)

    def benchmark_modules(self) -> dict[str, str]:
        """``distill-diffusion bench`` subcommand name → the import path of its module."""
        package = self.target.split(":")[0]
        return {name: f"{package}.bench_{kind}" for name, kind in self.benchmarks.items()}


_METHODS = "distill_diffusion.trainers.methods"
METHODS: dict[str, MethodEntry] = {
    "finetune": MethodEntry(f"{_METHODS}.finetune:FineTune"),
    "lcm": MethodEntry(f"{_METHODS}.lcm:LCM", benchmarks={"lcm": "speed", "lcm-gpu": "gpu", "consistency": "consistency"}),
    "progressive": MethodEntry(f"{_METHODS}.progressive:Progressive",
                               benchmarks={"progressive": "speed", "progressive-gpu": "gpu", "progressive-toy": "toy"}),
    "bksdm": MethodEntry(f"{_METHODS}.bksdm:BKSDM", benchmarks={"bksdm": "speed", "bksdm-gpu": "gpu", "bksdm-toy": "toy"}),
    "ladd": MethodEntry(f"{_METHODS}.ladd:LADD", benchmarks={"ladd": "speed", "ladd-gpu": "gpu"}),
    "add": MethodEntry(f"{_METHODS}.add:ADD", benchmarks={"add": "speed"}),
    "dmd2": MethodEntry(f"{_METHODS}.dmd2:DMD2", benchmarks={"dmd2": "speed", "dmd2-gpu": "gpu"}),
}


def get_method_class(name: str) -> type:
    """Return the method class for ``name``; unknown names fail with the list of valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_method_config_class(name: str) -> type:
    """The dataclass that configures method ``name`` (its ``config_class`` attribute)."""
    return get_method_class(name).config_class
