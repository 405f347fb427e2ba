"""Latent consistency distillation (LCM-LoRA and full LCM students), its benchmarks and diagnostics.

:mod:`.method` is the method; :mod:`.bench_speed`, :mod:`.bench_gpu` and :mod:`.consistency` are its benchmarks,
each with a torch-free ``*_command`` module for ``distill-diffusion bench``. Exports resolve lazily (PEP 562) so
that building the CLI parser, which imports the command modules, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = ("EXPORT_DTYPES", "LCM", "LCMConfig", "check_solver_grid", "check_teacher")
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.method"), name)
