"""The method registry: method name → its class and its benchmarks. Adding a method is one entry here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from distill_diffusion.errors import UserError


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives, as import paths so that `distill-diffusion --help` imports nothing heavy.

    ``target``: ``"module:Class"``. ``benchmarks``: ``distill-diffusion bench`` subcommand name → module
    exposing ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` (see :mod:`distill_diffusion.bench.registry`).
    """

    target: str
    benchmarks: Mapping[str, str] = field(default_factory=dict)


_LCM = "distill_diffusion.trainers.methods.lcm"
_PROGRESSIVE = "distill_diffusion.trainers.methods.progressive"
_BKSDM = "distill_diffusion.trainers.methods.bksdm"
_LADD = "distill_diffusion.trainers.methods.ladd"
_ADD = "distill_diffusion.trainers.methods.add"
METHODS: dict[str, MethodEntry] = {
    "finetune": MethodEntry("distill_diffusion.trainers.methods.finetune:FineTune"),
    "lcm": MethodEntry(f"{_LCM}:LCM", benchmarks={
        "lcm": f"{_LCM}.bench_speed_command", "lcm-gpu": f"{_LCM}.bench_gpu_command",
        "consistency": f"{_LCM}.consistency_command",
    }),
    "progressive": MethodEntry(f"{_PROGRESSIVE}:Progressive", benchmarks={
        "progressive": f"{_PROGRESSIVE}.bench_speed_command", "progressive-gpu": f"{_PROGRESSIVE}.bench_gpu_command",
        "progressive-toy": f"{_PROGRESSIVE}.bench_toy_command",
    }),
    "bksdm": MethodEntry(f"{_BKSDM}:BKSDM", benchmarks={
        "bksdm": f"{_BKSDM}.bench_speed_command", "bksdm-gpu": f"{_BKSDM}.bench_gpu_command",
        "bksdm-toy": f"{_BKSDM}.bench_toy_command",
    }),
    "ladd": MethodEntry(f"{_LADD}:LADD", benchmarks={
        "ladd": f"{_LADD}.bench_speed_command", "ladd-gpu": f"{_LADD}.bench_gpu_command", "adversarial-toy": f"{_LADD}.bench_toy_command",
    }),
    "add": MethodEntry(f"{_ADD}:ADD", benchmarks={"add": f"{_ADD}.bench_speed_command"}),
}  # fmt: skip


def get_method_class(name: str) -> type:
    """Return the method class for ``name``; unknown names fail with the list of valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_method_config_class(name: str) -> type:
    """The dataclass that configures method ``name`` (its ``config_class`` attribute)."""
    return get_method_class(name).config_class
