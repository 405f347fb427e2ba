"""Distillation and diffusion losses and their weightings, in fp32, shared by every method.

- L_simple, the per-sample MSE against the model's own target (Ho et al., "Denoising Diffusion Probabilistic
  Models", arXiv:2006.11239, eq. 14), with an optional per-sample weighting.
- Min-SNR-γ (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556,
  eq. 9) and truncated SNR, max(SNR, 1) (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion
  Models", arXiv:2202.00512, §4), both defined on the x0 error and moved to the model's target by dividing by
  its error scale k (:func:`distill_diffusion.core.parameterization.x0_error_scale`).
- The pseudo-Huber distance ``sqrt((a − b)² + c²) − c`` (Song & Dhariwal, "Improved Techniques for Training
  Consistency Models", arXiv:2310.14189, §3.3; the LCM-LoRA recipe uses c = 0.001).
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
