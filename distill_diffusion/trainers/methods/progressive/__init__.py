"""Progressive distillation (Salimans & Ho 2022) with guidance distillation (Meng et al. 2023), and its benchmarks.

:mod:`.method` is the method, :mod:`.plan` its rounds and grids, :mod:`.config` its options. Exports resolve lazily
(PEP 562), as in :mod:`distill_diffusion.trainers.methods.lcm`, so the CLI's command modules import no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Progressive": "method", "ProgressiveConfig": "config"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
