"""ADD: adversarial diffusion distillation of a 1-4-step student, a frozen DINOv2 ViT on decoded images as the
discriminator's feature network.

Sauer et al., "Adversarial Diffusion Distillation", arXiv:2311.17042, §3: the student (initialised from the teacher)
denoises a noised real latent in one step from t ∈ {999, 749, 499, 249}; its sample is decoded and judged by trainable
heads on the tokens of a frozen DINOv2 (§3.2), conditioned on the text embedding and the CLS embedding of the real
image the input was noised from; hinge loss with R1 (γ = 1e-5) on the heads' inputs; the generator adds λ = 2.5 times
the distillation term ᾱ_s·‖x̂ − x̂_teacher(re-noised x̂)‖² (eq. 5, c(t) = ᾱ_t). The student, the phases, the losses and
the export are the shared :class:`~distill_diffusion.trainers.methods.adversarial.method.AdversarialMethod`.

Real images are the training latents decoded by the same VAE as the student's, so the discriminator judges the
student, not the VAE's reconstruction error.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distill_diffusion.config import RunConfig
from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import Conditioning, as_conditioning, pooled_text_width
from distill_diffusion.models.encode import checkpoint_decoder, decode_latents
from distill_diffusion.models.loading import ExtraModel, SDComponents, TeacherConfigs
from distill_diffusion.trainers.methods.add import features as vit
from distill_diffusion.trainers.methods.add.config import ADDConfig
from distill_diffusion.trainers.methods.adversarial.heads import DiscriminatorHeads
from distill_diffusion.trainers.methods.adversarial.method import AdversarialMethod, Fakes


class ADD(AdversarialMethod):
    """A 1-4-step student of a Stable Diffusion teacher (1.x/2.x or SDXL), trained against a DINOv2 discriminator on images."""

    paper: ClassVar[str] = "Sauer et al., ADD, arXiv:2311.17042, §3"
    config_class: ClassVar[type] = ADDConfig
    card_name: ClassVar[str] = "add"
    reuses_fake_features: ClassVar[bool] = True
    resume_fields: ClassVar[tuple[str, ...]] = ("lora", "lora_rank", "lora_alpha", "lora_target_modules", "feature_layers",
                                                "head_width", "image_conditioning", "disc_student_timestep")

    @classmethod
    def extra_models(cls, config: ADDConfig) -> dict[str, ExtraModel]:
        return {"feature_network": ExtraModel("transformers:Dinov2Model", config.feature_network)}

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        cfg: ADDConfig = run.method_config
        vit.check_local_feature_network(cfg.feature_network, cfg.feature_layers, cfg.feature_resolution)
        super().check_before_loading(run, teacher)

    def __init__(self, components: SDComponents, config: ADDConfig, extra_models: dict[str, Any]):
        require(components.vae is not None, f"{components.source}: ADD decodes the student's latents to images and needs the "
                "teacher's VAE; use a pipeline folder with a vae/ subfolder")
        network = extra_models["feature_network"]
        layers = vit.check_vit_config(network.config.to_dict(), config.feature_network, config.feature_layers, config.feature_resolution)
        self.vit = vit.ViTFeatures(network, layers, config.feature_resolution)
        super().__init__(components, config)
        network.to(self.device)

    def build_heads(self) -> nn.Module:
        text = pooled_text_width(dict(self.components.unet.config))
        cond = text + (self.vit.width if self.config.image_conditioning else 0) + self.student_timestep_width()
        return DiscriminatorHeads(dict.fromkeys(self.vit.names(), self.vit.width), cond, self.config.head_width, dims=1)

    def enable_frozen_checkpointing(self) -> None:
        """The decode of the student's samples, with gradients, holds the VAE decoder's activations at image
        resolution, ADD's largest activation term (``bench train-memory --config add_sdxl``): checkpointed per block.
        The DINOv2 ViT is not: transformers checkpoints its layers only in training mode, and the frozen ViT stays in
        eval mode."""
        checkpoint_decoder(self.components.vae)

    def images(self, latents: Tensor) -> Tensor:
        """Decoded images in about [-1, 1], not clamped, so the generator's gradient reaches every pixel."""
        return decode_latents(self.components.vae, latents, clamp=False)

    def source_condition(self, x0: Tensor) -> Tensor | None:
        """The CLS embedding of the real image each fake was noised from (ADD's image conditioning), or None."""
        return self.vit(self.images(x0))[1].float() if self.config.image_conditioning else None

    def features(self, latents: Tensor, c: Conditioning, source: Any, own_rows: int) -> tuple[dict[str, Tensor], Tensor]:
        """The ViT's tokens at the chosen blocks of the decoded ``latents``; the condition is [pooled text, CLS of the
        real image]: a real sample's own (the first ``own_rows``), a fake's source's (``source``)."""
        tokens, cls = self.vit(self.images(latents))
        cond = as_conditioning(c).pooled()
        if self.config.image_conditioning:
            own = cls[:own_rows].float()
            cond = torch.cat([cond, own if own_rows == latents.shape[0] else torch.cat([own, source])], dim=1)
        return tokens, cond

    def discriminator_inputs(self, x0: Tensor, c: Conditioning, fakes: Fakes) -> tuple[dict[str, Tensor], Tensor]:
        """Fresh features of the real latents beside the generator's features of its samples: the frozen VAE and ViT
        give a sample the same features in both phases (no re-noising, unlike LADD), so the fakes are not decoded and
        read again. Samples made for a later discriminator update (no generator features) are read with the reals."""
        if fakes.features is None:
            return super().discriminator_inputs(x0, c, fakes)
        real, real_cond = self.features(x0, c, None, own_rows=x0.shape[0])
        fake, fake_cond = fakes.features
        return {k: torch.cat([real[k], fake[k].to(real[k].dtype)]) for k in real}, torch.cat([real_cond, fake_cond])

    def describe_discriminator(self) -> str:
        cfg = self.config
        return (f"discriminator heads (width {cfg.head_width}) on blocks {self.vit.layers} of the frozen {cfg.feature_network} "
                f"at {cfg.feature_resolution}² on decoded images, conditioned on text{' and image' if cfg.image_conditioning else ''}")
