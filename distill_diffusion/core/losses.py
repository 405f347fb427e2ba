"""Distillation and diffusion losses and their weightings, in fp32, shared by every method.

- L_simple, the per-sample MSE against the model's own target (Ho et al., "Denoising Diffusion Probabilistic
  Models", arXiv:2006.11239, eq. 14), with an optional per-sample weighting.
- Min-SNR-γ (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556,
  eq. 9) and truncated SNR, max(SNR, 1) (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion
  Models", arXiv:2202.00512, §4), both defined on the x0 error and moved to the model's target by dividing by
  its error scale k (:func:`distill_diffusion.core.parameterization.x0_error_scale`).
- The pseudo-Huber distance ``sqrt((a − b)² + c²) − c`` (Song & Dhariwal, "Improved Techniques for Training
  Consistency Models", arXiv:2310.14189, §3.3; the LCM-LoRA recipe uses c = 0.001).
- The distribution matching loss of DMD (Yin et al., "One-step Diffusion with Distribution Matching Distillation",
  arXiv:2311.18828, §3.2, eqs. 7-8; kept by DMD2, arXiv:2405.14867): the generator's sample moves along the
  difference of the real and fake scores at its noised copy, applied through a stop-gradient surrogate.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_mse(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over samples of ``weights · mean-over-elements((pred − target)²)``, in fp32 (unweighted: plain MSE)."""
    per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    return (per_sample if weights is None else per_sample * weights).mean()


def pseudo_huber(pred: Tensor, target: Tensor, c: float) -> Tensor:
    """``mean(sqrt((pred − target)² + c²) − c)`` in fp32: L2 near zero, L1 far from it."""
    diff = pred.float() - target.float()
    return (torch.sqrt(diff**2 + c**2) - c).mean()


def l2(pred: Tensor, target: Tensor) -> Tensor:
    """``mean((pred − target)²)`` in fp32."""
    return ((pred.float() - target.float()) ** 2).mean()


def min_snr_weights(snr: Tensor, gamma: float, error_scale: Tensor) -> Tensor:
    """Min-SNR-γ: ``min(SNR, γ) / k`` per sample (k: the target's error scale, SNR for eps, SNR + 1 for v)."""
    return torch.clamp(snr.float(), max=gamma) / error_scale


def truncated_snr_weights(snr: Tensor, error_scale: Tensor) -> Tensor:
    """Truncated SNR: ``max(SNR, 1) / k`` per sample (Salimans & Ho §4's weighting of the x0 error)."""
    return torch.clamp(snr.float(), min=1.0) / error_scale


def distribution_matching_loss(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's generator loss for samples ``x`` [B, ...] (with gradients) given the real and the fake score's x0
    predictions at a noised copy of them (no gradients), in fp32.

    The KL gradient with respect to x is w_t·α_t·(s_fake − s_real) (DMD eq. 7); with s = −(x_t − α_t·x̂0)/σ_t² it is
    proportional to x̂0_fake − x̂0_real, which DMD normalises per sample by the mean absolute distance between the
    sample and the real score's x̂0 (eq. 8: w_t = σ_t²/α_t · C·S/‖x − x̂0_real‖₁, so no timestep weighting is left).
    The surrogate ``0.5·mean((x − sg(x − g))²)`` has exactly that gradient g (over the element count) with respect to
    x; a sample with x = x̂0_real gives g = 0 instead of a division by zero."""
    x = x.float()
    with torch.no_grad():
        real, fake = x0_real.float(), x0_fake.float()
        scale = (x - real).abs().flatten(1).mean(dim=1).view(-1, *([1] * (x.ndim - 1)))
        grad = torch.nan_to_num((fake - real) / scale, nan=0.0, posinf=0.0, neginf=0.0)
    return 0.5 * ((x - (x - grad).detach()) ** 2).mean()
