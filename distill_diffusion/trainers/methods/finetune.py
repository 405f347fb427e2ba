"""Plain diffusion fine-tune: the standard noise-prediction loss, the engine's first method.

Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239, eq. 14 (L_simple), in the
checkpoint's own parameterisation (eps, v or x0 target; Salimans & Ho arXiv:2202.00512 §4 for v).
Optional Min-SNR-γ weighting: Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
Strategy", arXiv:2303.09556, eq. 9. BK-SDM reuses this as its task loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from distill_diffusion.core.losses import min_snr_weights, weighted_mse
from distill_diffusion.errors import require
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.export import TEACHER_SAMPLING, save_pipeline
from distill_diffusion.models.loading import SDComponents
from distill_diffusion.trainers.methods.base import LossOutput, MethodBase, Phase, StepContext


@dataclass
class FineTuneConfig:
    """Options of the plain fine-tune."""

    #: Min-SNR-γ loss weighting (γ = 5 in the paper); None trains with the unweighted L_simple.
    snr_gamma: float | None = None
    #: Offset noise strength (0 = off); helps very dark/bright images.
    noise_offset: float = 0.0

    def __post_init__(self) -> None:
        require(self.snr_gamma is None or self.snr_gamma > 0, "method.snr_gamma must be > 0; pass e.g. 5, or omit it for the unweighted loss")
        require(self.noise_offset >= 0, "method.noise_offset must be >= 0; pass e.g. 0.05, or 0 for none")


class FineTune(MethodBase):
    """Train every UNet weight on ``||model(z_t, t, c) − target(x0, eps, t)||²`` with t ~ U{0..T−1}."""

    paper: ClassVar[str] = "Ho et al., DDPM, arXiv:2006.11239, eq. 14"
    config_class: ClassVar[type] = FineTuneConfig

    def __init__(self, components: SDComponents, config: FineTuneConfig):
        self.components, self.config = components, config
        self.unet = self.build_unet(components)
        self.unet.train()
        self.schedule = components.schedule
        self.denoiser = Denoiser(self.unet, self.schedule, components.prediction_type)
        self.models = {"unet": self.unet}

    def build_unet(self, components: SDComponents) -> Any:
        """The UNet to train: the teacher's own, made trainable in fp32 (BK-SDM builds a smaller one here)."""
        unet = components.unet
        unet.requires_grad_(True)
        if unet.dtype != torch.float32:  # trainable weights in fp32; autocast does the half-precision compute
            stored = components.fp32_unet_state()  # as stored, not upcast from fp16/bf16 (read before the cast)
            unet.to(torch.float32)
            unet.load_state_dict(stored)
        return unet

    def phases(self) -> list[Phase]:
        return [Phase("unet", "unet")]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        x0, c, eps, t, z_t = self.noised_batch(batch)
        # 4. Predict in the model's own parameterisation and regress onto its target (loss in fp32).
        output = ctx.module("unet")(z_t, t, **c.unet_kwargs()).sample.float()  # fp32 weights (build_unet)
        return LossOutput(self.task_loss(output, x0, eps, t), {})

    def noised_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """``(x0, c, eps, t, z_t)``: steps 1-3 of the DDPM training loop on a data batch."""
        # 1. Encode: x0 = E(image)·scaling, c = text embeddings.
        x0, c = latents_and_embeddings(batch, self.components)
        # 2. Sample eps ~ N(0, I) (optionally offset) and t ~ U{0..T−1}; 3. z_t = alpha_t·x0 + sigma_t·eps.
        eps = torch.randn_like(x0)
        if self.config.noise_offset:
            eps = eps + self.config.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, device=x0.device)
        t = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return x0, c, eps, t, self.schedule.add_noise(x0, eps, t)

    def task_loss(self, output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_simple (eq. 14) of the UNet ``output`` against its target in the checkpoint's parameterisation, fp32."""
        return weighted_mse(output, self.denoiser.target(x0, eps, t), self._weights(t, x0))

    def _weights(self, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ on the x0 error, min(SNR, γ), moved to the model's target: eps → /SNR, v → /(SNR+1)."""
        if self.config.snr_gamma is None:
            return torch.ones_like(t, dtype=torch.float32)
        return min_snr_weights(self.schedule.snr(t), self.config.snr_gamma, self.denoiser.x0_error_scale(t, x0))

    def validation_pipeline(self) -> Any:
        from distill_diffusion.models.export import build_pipeline

        return build_pipeline(self.components, unet=self.unet)

    def export(self, output_dir: Path) -> None:
        save_pipeline(self.components, output_dir, unet=self.unet, method="finetune", paper=self.paper, sampling=TEACHER_SAMPLING)
