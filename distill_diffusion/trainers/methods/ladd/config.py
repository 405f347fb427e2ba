"""Options of latent adversarial diffusion distillation (defaults: Sauer et al., arXiv:2403.12015; docs/ladd.md)."""

from __future__ import annotations

from dataclasses import dataclass

from distill_diffusion.errors import require
from distill_diffusion.trainers.methods.adversarial.config import AdversarialConfig


@dataclass
class LADDConfig(AdversarialConfig):
    """LADD's options: the shared student and loss options, and where its latent discriminator looks (with a LoRA
    student the frozen discriminator backbone is the same UNet, adapter off)."""

    #: Teacher blocks whose outputs the discriminator heads read. Unset (null): every down block and the mid block.
    disc_blocks: list[str] | None = None
    #: The discriminator's noise level: logit-normal(mean, std) in rectified-flow time, taken at the DDPM timestep of
    #: equal SNR (mean 1: biased to high noise, where the backbone's features judge global structure).
    disc_noise_mean: float = 1.0
    disc_noise_std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.disc_blocks is None or len(self.disc_blocks) > 0, "method.disc_blocks is empty; leave it out (null) for "
                "the default taps (every down block and the mid block), or name one or more, e.g. down_blocks.1,mid_block")
        require(self.disc_noise_std > 0, f"method.disc_noise_std={self.disc_noise_std} must be > 0; the paper uses 1")
