"""The pieces of latent consistency distillation that the trainer and the consistency benchmark share.

Luo et al., "Latent Consistency Models", arXiv:2310.04378: the teacher's classifier-free-guided prediction
(Eq. 9, LCM form ``(1 + w)·cond − w·uncond``), one DDIM hop of the guided teacher (the skipping-step solver of
Sec. 4.3) and the consistency function with its boundary scalings (Sec. 4.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_diffusion.core import append_dims, cfg_lcm, consistency_scalings, ddim_step
from distill_diffusion.models.denoiser import Denoiser

#: σ_data of the boundary scalings. Fixed, because diffusers' LCMScheduler hard-codes 0.5 at inference.
SIGMA_DATA = 0.5


def guided_prediction(teacher: Denoiser, z: Tensor, t: Tensor, c: Tensor, uncond: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` of ``(1+w)·teacher(c) − w·teacher(∅)`` (LCM Eq. 9); cond and uncond in ONE forward.

    x0 and eps are combined with the same w. The combination is linear in the model output, so this equals
    converting the combined output, for every prediction type (the Denoiser converts before combining).
    """
    out = teacher(torch.cat([z, z]), torch.cat([t, t]), torch.cat([c, uncond]))
    (x0_c, x0_u), (eps_c, eps_u) = out.x0.chunk(2), out.eps.chunk(2)
    w_b = append_dims(w.float(), z.ndim)
    return cfg_lcm(x0_c, x0_u, w_b), cfg_lcm(eps_c, eps_u, w_b)


def guided_ddim_step(teacher: Denoiser, z: Tensor, t: Tensor, s: Tensor, c: Tensor, uncond: Tensor, w: Tensor) -> Tensor:
    """One deterministic DDIM step t → s of the guided teacher (:func:`guided_prediction`)."""
    x0, eps = guided_prediction(teacher, z, t, c, uncond, w)
    schedule = teacher.schedule
    return ddim_step(x0, eps, append_dims(schedule.alpha(s), z.ndim), append_dims(schedule.sigma(s), z.ndim))


def consistency_function(x0: Tensor, z: Tensor, t: Tensor, timestep_scaling: float) -> Tensor:
    """``f(z, t) = c_skip(t)·z + c_out(t)·x0_hat(z, t)`` (LCM Sec. 4.1); exactly z at t = 0 (c_skip = 1, c_out = 0)."""
    c_skip, c_out = consistency_scalings(t, SIGMA_DATA, timestep_scaling)
    return append_dims(c_skip, z.ndim) * z.float() + append_dims(c_out, z.ndim) * x0
