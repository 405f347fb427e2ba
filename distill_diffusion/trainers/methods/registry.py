"""The method registry: method name → its class and its benchmarks. Adding a method is one entry here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from distill_diffusion.errors import UserError


@dataclass(frozen=True)
class ToyStudent:
    """A student ``distill-diffusion bench methods`` trains from a teacher with a shipped config and scores beside it.

    ``config``: the tiny config (the toy world; ``ToyTeacher.config`` adds ``_xl`` for the SDXL teacher); ``presets``:
    family (``sd15``, ``sdxl``) → the full-size config, for a user's own teacher. ``export``: ``lora`` (a LoRA on its
    base model), ``model`` (a diffusers pipeline folder) or ``rounds`` (one pipeline folder per halving round, each
    sampled at its own step count). ``guidance``: the scale it is sampled at (None: the benchmark's teacher guidance, for
    students that keep classifier-free guidance or embed the distilled scale). ``base``: another student whose export is
    this one's base model. ``options``: method options over the config's; ``{toy_dinov2}`` stands for the toy DINOv2
    feature network. ``method``: the registry name that trains it (default: the entry's own).
    """

    name: str
    config: str
    sampler: str
    presets: Mapping[str, str] = field(default_factory=dict)
    export: Literal["lora", "model", "rounds"] = "lora"
    steps: tuple[int, ...] = (1, 2, 4, 8)
    guidance: float | None = 1.0
    base: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    method: str | None = None
    bars: tuple[tuple[int, float, float | None], ...] = ()
    best_at: tuple[int, ...] = ()


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives, as import paths so that `distill-diffusion --help` imports nothing heavy.

    ``target``: ``"module:Class"``. ``benchmarks``: ``distill-diffusion bench`` subcommand name → kind; the benchmark
    is the module ``bench_<kind>`` of the method's own package (the module of ``target``), which exposes ``HELP``,
    ``add_arguments(parser)`` and ``run(args) -> int`` (see :mod:`distill_diffusion.bench.registry`). ``toy_students``:
    the students of this method that ``bench methods`` trains and scores.
    """

    target: str
    benchmarks: Mapping[str, str] = field(default_factory=dict)
    toy_students: tuple[ToyStudent, ...] = ()

    def benchmark_modules(self) -> dict[str, str]:
        """``distill-diffusion bench`` subcommand name → the import path of its module."""
        package = self.target.split(":")[0]
        return {name: f"{package}.bench_{kind}" for name, kind in self.benchmarks.items()}


_METHODS = "distill_diffusion.trainers.methods"
#: The few-step students' toy bars (ADD, arXiv:2311.17042, and LADD, arXiv:2403.12015, compare their 1-step students with
#: the teacher at 50 steps): 1 step ≤ 1.5× the teacher's FID with CLIP within 10%, 4 steps ≤ 1.2×.
FEW_STEP_BARS = ((1, 1.5, 0.9), (4, 1.2, None))
#: The LCM-LoRA's (the quickstart's, docs/lcm.md; LCM, arXiv:2310.04378, reports 4 steps as its operating point): 4
#: steps ≤ 1.5× the teacher's FID with CLIP within 10%.
LCM_LORA_BARS = ((4, 1.5, 0.9),)
#: DMD2 claims more (arXiv:2405.14867, §5: 1-step quality at the teacher's level): the teacher's FID itself at 1 step,
#: CLIP within 5%, 0.9× at 4 steps, and a 1-step FID better than every other student's.
DMD2_BARS = ((1, 1.0, 0.95), (4, 0.9, None))
METHODS: dict[str, MethodEntry] = {
    "finetune": MethodEntry(f"{_METHODS}.finetune:FineTune"),
    "lcm": MethodEntry(f"{_METHODS}.lcm:LCM", benchmarks={"lcm": "speed", "lcm-gpu": "gpu", "consistency": "consistency"},
                       toy_students=(ToyStudent("lcm-lora", "tiny/lcm_lora", "lcm", {"sd15": "lcm_lora_sd15", "sdxl": "lcm_lora_sdxl"},
                                                bars=LCM_LORA_BARS),
                                     ToyStudent("lcm-full", "tiny/lcm_full", "lcm", {"sd15": "lcm_full_sd15", "sdxl": "lcm_full_sdxl"},
                                                export="model", guidance=None))),
    "progressive": MethodEntry(f"{_METHODS}.progressive:Progressive",
                               benchmarks={"progressive": "speed", "progressive-gpu": "gpu", "progressive-toy": "toy"},
                               toy_students=(ToyStudent("progressive", "tiny/progressive", "progressive",
                                                        {"sd15": "progressive_sd15", "sdxl": "progressive_sdxl"}, export="rounds"),)),
    "bksdm": MethodEntry(f"{_METHODS}.bksdm:BKSDM", benchmarks={"bksdm": "speed", "bksdm-gpu": "gpu", "bksdm-toy": "toy"},
                         toy_students=(ToyStudent("bksdm-small", "tiny/bksdm", "ddim", {"sd15": "bksdm_small_sd14", "sdxl": "bksdm_koala_700m_sdxl"},
                                                  export="model", steps=(1, 2, 4, 8, 25), guidance=None),
                                       ToyStudent("bksdm-small+lcm-lora", "tiny/lcm_lora", "lcm", {"sd15": "lcm_lora_sd15", "sdxl": "lcm_lora_sdxl"},
                                                  base="bksdm-small", method="lcm"))),
    "ladd": MethodEntry(f"{_METHODS}.ladd:LADD", benchmarks={"ladd": "speed", "ladd-gpu": "gpu"},
                        toy_students=(ToyStudent("ladd", "tiny/ladd", "ladd", {"sd15": "ladd_sd15", "sdxl": "ladd_sdxl"}, steps=(1, 2, 4),
                                                 bars=FEW_STEP_BARS),)),
    "add": MethodEntry(f"{_METHODS}.add:ADD", benchmarks={"add": "speed"},
                       toy_students=(ToyStudent("add", "tiny/add", "ladd", {"sd15": "add_sd15", "sdxl": "add_sdxl"}, steps=(1, 2, 4),
                                                options={"feature_network": "{toy_dinov2}"}, bars=FEW_STEP_BARS),)),
    "dmd2": MethodEntry(f"{_METHODS}.dmd2:DMD2", benchmarks={"dmd2": "speed", "dmd2-gpu": "gpu"},
                        toy_students=(ToyStudent("dmd2", "tiny/dmd2", "ladd", {"sd15": "dmd2_sd15", "sdxl": "dmd2_sdxl"}, steps=(1, 2, 4),
                                                 bars=DMD2_BARS, best_at=(1,)),)),
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


def toy_students() -> dict[str, tuple[str, ToyStudent]]:
    """Every method's :class:`ToyStudent`, by student name → (the method that trains it, the student), in registry order."""
    found: dict[str, tuple[str, ToyStudent]] = {}
    for method, entry in METHODS.items():
        for student in entry.toy_students:
            if student.name in found:
                raise ValueError(f"toy student {student.name!r} of method {method!r} is declared twice")
            found[student.name] = (student.method or method, student)
    return found
