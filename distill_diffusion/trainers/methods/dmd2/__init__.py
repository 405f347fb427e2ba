"""DMD2: distribution matching distillation with a GAN term (Yin et al., arXiv:2405.14867).

Exports resolve lazily (:func:`distill_diffusion.lazy.lazy_exports`), so the CLI's benchmark modules import no torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"DMD2": "method", "DMD2Config": "config"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
