"""BK-SDM block-removal feature distillation (Kim et al., arXiv:2305.15798): architecture, features, method.

Exports resolve lazily, so ``distill-diffusion --help`` (which imports this package's benchmark and
inspect-student modules) imports no torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"BKSDM": "method", "BKSDMConfig": "config"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
