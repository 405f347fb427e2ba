"""Adversarial diffusion distillation (Sauer et al., arXiv:2311.17042): a frozen DINOv2 ViT on decoded images as the
discriminator's feature network, trainable heads on its tokens, the distillation term.

Exports resolve lazily (:func:`distill_diffusion.lazy.lazy_exports`), so the CLI's benchmark modules import no torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"ADD": "method", "ADDConfig": "config"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
