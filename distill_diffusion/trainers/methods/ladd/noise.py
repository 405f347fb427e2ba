"""LADD's discriminator noise level, biased towards high noise (the student's timesteps are drawn by
:func:`distill_diffusion.trainers.methods.adversarial.method.sample_student_timesteps`).

Sauer et al., arXiv:2403.12015, §3.2-3.3: the student is trained at timesteps {1, .75, .5, .25} (rectified-flow time)
with probabilities [0.7, 0.1, 0.1, 0.1]; the discriminator sees samples re-noised at t ~ logit-normal(m = 1, s = 1).
On SD's discrete DDPM schedule the student timesteps are 999 / 749 / 499 / 249 (trailing spacing) and the
discriminator's level is the DDPM timestep of equal signal-to-noise ratio: in rectified flow z = (1 − t)·x + t·ε, so
log SNR = 2·log((1 − t)/t) = −2·u with u ~ N(m, s).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_diffusion.core.schedule import NoiseSchedule


def log_snr_table(schedule: NoiseSchedule, device: torch.device) -> Tensor:
    """log SNR(t) for t = 0 .. T−1 (falling as t rises), computed once per run."""
    return schedule.snr(torch.arange(schedule.num_train_timesteps, device=device)).float().log()


def equal_snr_timesteps(table: Tensor, log_snr: Tensor) -> Tensor:
    """The DDPM timestep whose log SNR (``table``, from :func:`log_snr_table`) is nearest each value."""
    return (table[None, :] - log_snr[:, None]).abs().argmin(dim=1)


def sample_disc_timesteps(table: Tensor, batch: int, mean: float, std: float) -> Tensor:
    """Logit-normal(mean, std) noise levels in rectified-flow time, as DDPM timesteps of equal SNR."""
    u = torch.randn(batch, device=table.device) * std + mean
    return equal_snr_timesteps(table, -2.0 * u)
