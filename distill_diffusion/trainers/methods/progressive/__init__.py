"""Progressive distillation (Salimans & Ho 2022) with guidance distillation (Meng et al. 2023), and its benchmarks.

:mod:`.method` is the method, :mod:`.plan` its rounds and grids, :mod:`.config` its options. Exports resolve lazily
(PEP 562), as in :mod:`distill_diffusion.trainers.methods.lcm`, so the CLI's benchmark modules import no torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"Progressive": "method", "ProgressiveConfig": "config"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
