"""The denoiser adapter: wraps a diffusers UNet and returns (x0, eps) whatever its prediction type.

After k-diffusion's ``external.py`` wrappers and EDM's preconditioning (Karras et al., arXiv:2206.00364):
methods talk in x0/eps, and this class (with ``core.parameterization``) is the only reader of
``prediction_type`` outside ``core``. Outputs are float32 whatever the UNet's dtype, so losses and solver
steps never run in half precision. The condition is a :class:`~distill_diffusion.models.conditioning.Conditioning`
(SDXL's pooled text and micro-conditioning ride along as ``added_cond_kwargs``); a bare text-embedding tensor is taken
as an SD 1.x/2.x one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill_diffusion.core.parameterization import PREDICTION_TYPES, from_x0_eps, to_x0_eps, x0_error_scale
from distill_diffusion.core.schedule import NoiseSchedule, append_dims
from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import Conditioning, as_conditioning


@dataclass
class DenoiserOutput:
    """One denoiser evaluation: data and noise estimates and the raw UNet output, all float32."""

    x0: Tensor
    eps: Tensor
    model_output: Tensor


def module_dtype(module: Any) -> torch.dtype:
    """The dtype a module's inputs should have: its first floating parameter's.

    Not diffusers' ``module.dtype`` property, which walks the whole module (milliseconds a call on a
    small UNet, paid on every training step); wrapped modules (DDP, compiled) have no ``.dtype`` at all.
    """
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


class Denoiser:
    """``Denoiser(unet, schedule, prediction_type)(z_t, t, c)`` -> :class:`DenoiserOutput`, ``c`` a Conditioning.

    ``unet`` is any callable with the ``UNet2DConditionModel`` signature (a plain, peft-wrapped or
    accelerate-prepared UNet); ``t`` holds integer timesteps, shape [B] or a scalar.
    """

    def __init__(self, unet: Any, schedule: NoiseSchedule, prediction_type: str) -> None:
        require(prediction_type in PREDICTION_TYPES, f"prediction_type={prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    def _scalings(self, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, device=like.device)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        return append_dims(self.schedule.alpha(t), like.ndim), append_dims(self.schedule.sigma(t), like.ndim)

    def __call__(self, z_t: Tensor, t: Tensor | int, c: Conditioning | Tensor, **unet_kwargs: Any) -> DenoiserOutput:
        """Run the UNet on ``z_t`` at ``t`` and convert its output to (x0, eps) in float32.

        Extra keyword arguments (``timestep_cond``, ``cross_attention_kwargs``, ...) go to the UNet.
        """
        dtype = module_dtype(self.unet)
        t = torch.as_tensor(t, device=z_t.device)
        raw = self.unet(z_t.to(dtype), t, return_dict=False, **as_conditioning(c).unet_kwargs(dtype), **unet_kwargs)[0]
        model_output = raw.float()
        alpha, sigma = self._scalings(t, z_t)
        x0, eps = to_x0_eps(model_output, z_t.float(), alpha, sigma, self.prediction_type)
        return DenoiserOutput(x0=x0, eps=eps, model_output=model_output)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """What the UNet should output for ``z_t = alpha_t x0 + sigma_t eps`` (the plain diffusion loss target)."""
        alpha, sigma = self._scalings(t, x0)
        return from_x0_eps(x0.float(), eps.float(), alpha, sigma, self.prediction_type)

    def x0_error_scale(self, t: Tensor | int, like: Tensor) -> Tensor:
        """Per-sample ``k`` with target MSE = k · x0 MSE (:func:`core.parameterization.x0_error_scale`), shape [B]."""
        alpha, sigma = self._scalings(t, like)
        return x0_error_scale(alpha, sigma, self.prediction_type).reshape(like.shape[0], -1)[:, 0]
