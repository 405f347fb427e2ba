"""Conversions between a model output and (x0, eps) for every prediction type; consistency scalings.

This is the only module that spells out the three prediction types. With
``z_t = alpha_t x0 + sigma_t eps`` (VP, ``alpha^2 + sigma^2 = 1``):

- ``epsilon``: the output is eps (Ho et al., DDPM, arXiv:2006.11239).
- ``v_prediction``: the output is ``v = alpha_t eps - sigma_t x0`` (Salimans & Ho, arXiv:2202.00512,
  Sec. 4 / Appendix D), so ``x0 = alpha_t z_t - sigma_t v`` and ``eps = sigma_t z_t + alpha_t v``.
- ``sample``: the output is x0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_diffusion.core.schedule import append_dims
from distill_diffusion.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"unknown prediction_type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}"
        )


def to_x0_eps(
    model_output: Tensor, z_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """Return ``(x0, eps)`` implied by ``model_output`` at ``z_t``.

    ``alpha_t``/``sigma_t`` must broadcast against ``z_t`` (e.g. [B,1,1,1]). For ``epsilon`` the x0 estimate
    divides by alpha_t (error amplified by 1/alpha_t near pure noise); for ``sample`` eps divides by sigma_t.
    """
    _check(prediction_type)
    if prediction_type == "epsilon":
        eps = model_output
        return (z_t - sigma_t * eps) / alpha_t, eps
    if prediction_type == "sample":
        x0 = model_output
        return x0, (z_t - alpha_t * x0) / sigma_t
    v = model_output
    return alpha_t * z_t - sigma_t * v, sigma_t * z_t + alpha_t * v


def from_x0_eps(x0: Tensor, eps: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: str) -> Tensor:
    """The regression target in the model's own parameterisation: eps, ``v = alpha eps - sigma x0``, or x0."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return alpha_t * eps - sigma_t * x0


def x0_error_scale(alpha_t: Tensor, sigma_t: Tensor, prediction_type: str) -> Tensor:
    """``k`` with ``||target − output||² = k · ||x0 − x̂0||²`` for a fixed ``z_t``.

    eps: ``k = SNR = alpha²/sigma²``; v: ``k = SNR + 1 = 1/sigma²`` (alpha² + sigma² = 1); x0: ``k = 1``.
    Loss weightings defined on the x0 error (Min-SNR-γ, Hang et al. arXiv:2303.09556 eq. 9; truncated
    SNR, Salimans & Ho arXiv:2202.00512 §4) divide by ``k`` to act on the model's own target.
    """
    _check(prediction_type)
    if prediction_type == "epsilon":
        return alpha_t**2 / sigma_t**2
    if prediction_type == "sample":
        return torch.ones_like(alpha_t)
    return 1.0 / sigma_t**2


#: σ_data of the consistency boundary scalings. Fixed, because diffusers' LCMScheduler hard-codes 0.5 at inference.
SIGMA_DATA = 0.5


def consistency_scalings(
    t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of the consistency function ``f(z, t) = c_skip z + c_out x0_hat``.

    Luo et al., "Latent Consistency Models", arXiv:2310.04378, Sec. 3/4.1 parameterisation of f_theta (after
    Song et al., "Consistency Models", arXiv:2303.01469, Sec. 3), with the LCM reference code's discrete
    timestep scaling s:
    ``c_skip = sd^2 / ((s t)^2 + sd^2)``, ``c_out = s t / sqrt((s t)^2 + sd^2)``. At ``t = 0``
    ``c_skip = 1`` and ``c_out = 0`` exactly (the boundary condition ``f(z, 0) = z``). Same values as
    ``LCMScheduler.get_scalings_for_boundary_condition_discrete``; computed in float64, returned float32.
    """
    scaled = torch.as_tensor(t).to(torch.float64) * timestep_scaling
    denom = scaled**2 + sigma_data**2
    c_skip = sigma_data**2 / denom
    c_out = scaled / denom.sqrt()
    return c_skip.to(torch.float32), c_out.to(torch.float32)


def consistency_function(x0: Tensor, z: Tensor, t: Tensor, timestep_scaling: float) -> Tensor:
    """``f(z, t) = c_skip(t)·z + c_out(t)·x0_hat(z, t)`` (LCM Sec. 4.1); exactly z at t = 0 (c_skip = 1, c_out = 0)."""
    c_skip, c_out = consistency_scalings(t, SIGMA_DATA, timestep_scaling)
    return append_dims(c_skip, z.ndim) * z.float() + append_dims(c_out, z.ndim) * x0
