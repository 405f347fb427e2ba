"""DMD2: distribution matching distillation with a GAN term (Yin et al., arXiv:2405.14867)."""

from distill_diffusion.trainers.methods.dmd2.config import DMD2Config
from distill_diffusion.trainers.methods.dmd2.method import DMD2

__all__ = ["DMD2", "DMD2Config"]
