"""The training noise schedule of a diffusion model, read from its own scheduler config.

Variance-preserving forward process (Ho et al., DDPM, arXiv:2006.11239, eq. 4):
``z_t = alpha_t * x0 + sigma_t * eps`` with ``alpha_t = sqrt(abar_t)`` and ``sigma_t = sqrt(1 - abar_t)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``x`` until it has ``ndim`` dims (per-sample scalars → [B,1,1,1])."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {x.ndim} dims, more than the target {ndim}")
    return x[(...,) + (None,) * missing]


@dataclass(frozen=True, eq=False)  # tensor fields: compare by identity, not elementwise
class NoiseSchedule:
    """Discrete VP schedule: ``alphas_cumprod[t] = abar_t`` for ``t = 0 .. T-1`` (float64).

    Timesteps are integer tensors; ``t < 0`` means "clean data" (alpha=1, sigma=0), so a solver step to
    the data end needs no special case. Outputs are float32 on ``t``'s device.
    """

    alphas_cumprod: Tensor
    num_train_timesteps: int
    # Per-device float32 [2, T] table of (alpha, sigma); a cache, not part of the value.
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_scheduler_config(cls, config: Mapping) -> NoiseSchedule:
        """Build from a diffusers scheduler config (dict or FrozenDict of any SD scheduler class).

        The betas come from ``DDPMScheduler.from_config`` so ``beta_schedule``, ``trained_betas`` and
        ``rescale_betas_zero_snr`` are honoured exactly as diffusers does; nothing is hard-coded.
        """
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(dict(config))
        abar = scheduler.alphas_cumprod.detach().to(torch.float64).cpu()
        return cls(alphas_cumprod=abar, num_train_timesteps=int(abar.shape[0]))

    def _table(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._tables:
            abar = self.alphas_cumprod
            # float64 sqrt, then float32: the same values diffusers gets from float32 abar.
            table = torch.stack([abar.sqrt(), (1.0 - abar).sqrt()]).to(device=device, dtype=torch.float32)
            self._tables[key] = table
        return self._tables[key]

    def _lookup(self, t: Tensor | int, row: int, clean_value: float) -> Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"timesteps must be an integer tensor, got {t.dtype}")
        values = self._table(t.device)[row][t.clamp(min=0).long()]
        return torch.where(t < 0, torch.full_like(values, clean_value), values)

    def alpha(self, t: Tensor | int) -> Tensor:
        """``alpha_t = sqrt(abar_t)``, shaped like ``t``; 1 where ``t < 0``."""
        return self._lookup(t, 0, 1.0)

    def sigma(self, t: Tensor | int) -> Tensor:
        """``sigma_t = sqrt(1 - abar_t)``, shaped like ``t``; 0 where ``t < 0``."""
        return self._lookup(t, 1, 0.0)

    def snr(self, t: Tensor | int) -> Tensor:
        """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2`` (Kingma et al., VDM); inf where ``t < 0``."""
        return self.alpha(t) ** 2 / self.sigma(t) ** 2

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """``z_t = alpha_t * x0 + sigma_t * eps`` (DDPM eq. 4), per-sample ``t`` of shape [B] or scalar.

        Equals ``DDPMScheduler.add_noise``; computed in at least float32, returned in ``x0``'s dtype.
        """
        t = torch.as_tensor(t, device=x0.device)
        alpha = append_dims(self.alpha(t), x0.ndim)
        sigma = append_dims(self.sigma(t), x0.ndim)
        return (alpha * x0 + sigma * eps).to(x0.dtype)
