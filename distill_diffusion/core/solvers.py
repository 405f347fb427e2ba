"""Deterministic DDIM step and the progressive-distillation target that makes one step match two."""

from __future__ import annotations

from torch import Tensor


def ddim_step(x0: Tensor, eps: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """Deterministic DDIM update to time ``s``: ``z_s = alpha_s x0_hat + sigma_s eps_hat``.

    Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502, eq. 12 with eta = 0 (sigma_t = 0),
    written with ``alpha_s = sqrt(abar_s)`` and ``sigma_s = sqrt(1 - abar_s)``. ``alpha_s``/``sigma_s``
    broadcast against ``x0`` (e.g. [B,1,1,1]); use alpha=1, sigma=0 to land on clean data.
    """
    return alpha_s * x0 + sigma_s * eps


def progressive_target_x0(
    z_t: Tensor,
    z_tpp: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_tpp: Tensor,
    sigma_tpp: Tensor,
) -> Tensor:
    """The x0 target ``x_tilde`` such that ONE DDIM step from ``z_t`` lands exactly on ``z_tpp``.

    Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", arXiv:2202.00512,
    Alg. 2: ``x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)``, where
    ``z_t''`` is the teacher's result after two DDIM steps t -> t' -> t''. At ``t'' = 0``
    (alpha=1, sigma=0) this is ``z_t''`` itself, i.e. the teacher's x0 estimate.
    """
    ratio = sigma_tpp / sigma_t
    return (z_tpp - ratio * z_t) / (alpha_tpp - ratio * alpha_t)
