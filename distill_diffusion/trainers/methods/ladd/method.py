"""LADD: latent adversarial diffusion distillation of a 1-4-step student, the teacher UNet as the discriminator's backbone.

Sauer et al., "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation", arXiv:2403.12015,
§3: the student's sample, re-noised at a high-biased noise level, and a real latent re-noised alike go through the
frozen teacher UNet up to its deepest tapped block; small conv heads on those features, conditioned on the noise level
and the pooled text, tell them apart. The student, the phases, the losses and the export are the shared
:class:`~distill_diffusion.trainers.methods.adversarial.method.AdversarialMethod`; with a LoRA student the backbone is
the same UNet with its adapter off, so there is no second copy of it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distill_diffusion.config import RunConfig
from distill_diffusion.models.conditioning import Conditioning, pooled_text_width
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.models.lora import adapters_disabled
from distill_diffusion.trainers.methods.adversarial.heads import (
    TIME_DIM,
    DiscriminatorHeads,
    noise_text_condition,
)
from distill_diffusion.trainers.methods.adversarial.method import AdversarialMethod
from distill_diffusion.trainers.methods.ladd import backbone as bb
from distill_diffusion.trainers.methods.ladd.config import LADDConfig
from distill_diffusion.trainers.methods.ladd.noise import log_snr_table, sample_disc_timesteps


def taps_of(config: LADDConfig, unet_config: dict[str, Any]) -> list[str]:
    return bb.tap_names(unet_config) if config.disc_blocks is None else list(config.disc_blocks)


class LADD(AdversarialMethod):
    """A 1-4-step student of a Stable Diffusion teacher (1.x/2.x or SDXL), trained against a latent discriminator."""

    paper: ClassVar[str] = "Sauer et al., LADD, arXiv:2403.12015, §3"
    config_class: ClassVar[type] = LADDConfig
    card_name: ClassVar[str] = "ladd"
    resume_fields: ClassVar[tuple[str, ...]] = ("lora", "lora_rank", "lora_alpha", "lora_target_modules", "disc_blocks", "head_width",
                                                    "disc_student_timestep")

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        if teacher is not None:
            bb.check_taps(teacher.unet, taps_of(run.method_config, teacher.unet))
        super().check_before_loading(run, teacher)

    def __init__(self, components: SDComponents, config: LADDConfig):
        unet_config = dict(components.unet.config)
        self.taps = taps_of(config, unet_config)
        bb.check_taps(unet_config, self.taps)
        super().__init__(components, config)
        self.backbone = self.teacher_unet
        self.log_snr = log_snr_table(self.schedule, self.device)

    def build_heads(self) -> nn.Module:
        unet_config = dict(self.components.unet.config)
        channels = {tap: bb.tap_channels(unet_config, tap) for tap in self.taps}
        return DiscriminatorHeads(channels, TIME_DIM + pooled_text_width(unet_config) + self.student_timestep_width(),
                                  self.config.head_width)

    def features(self, latents: Tensor, c: Conditioning, source: Any, own_rows: int) -> tuple[dict[str, Tensor], Tensor]:
        """Each sample re-noised at its own high-biased level t_d, through the backbone up to its deepest tap (adapter
        off); the condition is [embedding of t_d, pooled text]."""
        cfg = self.config
        t_d = sample_disc_timesteps(self.log_snr, latents.shape[0], cfg.disc_noise_mean, cfg.disc_noise_std)
        z_d = self.schedule.add_noise(latents, torch.randn_like(latents), t_d)
        with adapters_disabled(self.layers):
            features = bb.unet_features(self.backbone, z_d, t_d, c, self.taps)
        return features, noise_text_condition(t_d, c)

    def describe_discriminator(self) -> str:
        cfg = self.config
        return (f"discriminator heads (width {cfg.head_width}) on {', '.join(self.taps)} of the frozen teacher, noise level "
                f"logit-normal({cfg.disc_noise_mean}, {cfg.disc_noise_std}) at equal SNR")
