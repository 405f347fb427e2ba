"""Latent adversarial diffusion distillation (Sauer et al., arXiv:2403.12015): backbone, heads, noise levels, method.

Exports resolve lazily (:func:`distill_diffusion.lazy.lazy_exports`), so the CLI's benchmark modules import no torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"LADD": "method", "LADDConfig": "config"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
