"""distill-diffusion: make Stable Diffusion fast by distillation."""

__version__ = "0.1.0"
