"""The guided teacher: its classifier-free-guided prediction and one deterministic DDIM step of it.

Shared by every method that distils a guided teacher (latent consistency distillation, progressive
distillation's guidance stage, adversarial distillation's distillation term). Guidance in the LCM form
``(1 + w)·cond − w·uncond`` (Luo et al., "Latent Consistency Models", arXiv:2310.04378, Eq. 9; Meng et al.,
"On Distillation of Guided Diffusion Models", arXiv:2210.03142, Eq. 3 uses the same w); diffusers' guidance
scale is ``w + 1`` (:mod:`distill_diffusion.core.guidance`). Users give the guidance a student is distilled for as
diffusers scales, ``guidance_scale_min`` and ``guidance_scale_max`` (docs/methods.md); the math reads w.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill_diffusion.config_types import RenamedOption
from distill_diffusion.core import append_dims, cfg_lcm, ddim_step, lcm_w_to_guidance_scale
from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import Conditioning, as_conditioning, cat
from distill_diffusion.models.denoiser import Denoiser

#: A conditioning, or a bare text-embedding tensor (SD 1.x/2.x).
Cond = Conditioning | Tensor

#: The guidance range options' former names, in the LCM weight w: configs and saved runs that hold them still load.
GUIDANCE_RANGE_RENAMES = {
    "w_min": RenamedOption("guidance_scale_min", lcm_w_to_guidance_scale, "guidance_scale = w + 1"),
    "w_max": RenamedOption("guidance_scale_max", lcm_w_to_guidance_scale, "guidance_scale = w + 1"),
}


def check_guidance_range(guidance_scale_min: float, guidance_scale_max: float) -> None:
    """The teacher guidance a student is distilled for: ``1 <= guidance_scale_min <= guidance_scale_max`` (diffusers scales)."""
    require(guidance_scale_min >= 1, f"method.guidance_scale_min={guidance_scale_min} must be >= 1 (diffusers guidance_scale; "
            "1 = no guidance); pass e.g. 2")
    require(guidance_scale_min <= guidance_scale_max, f"method.guidance_scale_min={guidance_scale_min} is larger than "
            f"method.guidance_scale_max={guidance_scale_max}; swap them or make them equal")


def guided_prediction(teacher: Denoiser, z: Tensor, t: Tensor, c: Cond, uncond: Cond, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` of ``(1+w)·teacher(c) − w·teacher(∅)`` (LCM Eq. 9); cond and uncond in ONE forward.

    x0 and eps are combined with the same w. The combination is linear in the model output, so this equals
    converting the combined output, for every prediction type (the Denoiser converts before combining).
    The unconditional branch gets the conditional branch's micro-conditioning (SDXL time ids), as diffusers' SDXL
    pipelines give both branches the same ``add_time_ids``.
    """
    c, uncond = as_conditioning(c), as_conditioning(uncond)
    if c.has_added:
        uncond = uncond.with_time_ids(c.time_ids)
    out = teacher(torch.cat([z, z]), torch.cat([t, t]), cat([c, uncond]))
    (x0_c, x0_u), (eps_c, eps_u) = out.x0.chunk(2), out.eps.chunk(2)
    w_b = append_dims(w.float(), z.ndim)
    return cfg_lcm(x0_c, x0_u, w_b), cfg_lcm(eps_c, eps_u, w_b)


def guided_ddim_step(teacher: Denoiser, z: Tensor, t: Tensor, s: Tensor, c: Cond, uncond: Cond, w: Tensor) -> Tensor:
    """One deterministic DDIM step t → s of the guided teacher (:func:`guided_prediction`)."""
    x0, eps = guided_prediction(teacher, z, t, c, uncond, w)
    schedule = teacher.schedule
    return ddim_step(x0, eps, append_dims(schedule.alpha(s), z.ndim), append_dims(schedule.sigma(s), z.ndim))


class UncondEmbedding:
    """The unconditional input of the teacher's CFG, expanded to the batch of a conditioning ``c``.

    ``empty_prompt``: the empty prompt's encoding, made once per device/dtype (what SD pipelines use); ``zeros``: zero
    embeddings (the diffusers LCM scripts; SDXL's ``force_zeros_for_empty_prompt``: zero prompt and pooled embeddings).
    ``mode`` None follows the checkpoint: zeros when its pipeline config sets ``force_zeros_for_empty_prompt``. The
    micro-conditioning is ``c``'s own. A bare tensor ``c`` gives a bare tensor back (SD callers).
    """

    def __init__(self, components: Any, mode: str | None = None) -> None:
        self.components = components
        self.mode = mode or ("zeros" if getattr(components, "force_zeros_for_empty_prompt", False) else "empty_prompt")
        self._cache: dict[str, Conditioning] = {}

    def __call__(self, c: Cond) -> Cond:
        if isinstance(c, Tensor):
            return self(Conditioning(c)).encoder_hidden_states
        if self.mode == "zeros":
            return c.zeros_like()
        key = f"{c.device}/{c.dtype}"
        if key not in self._cache:
            from distill_diffusion.models.encode import encode_conditioning

            with torch.no_grad():
                self._cache[key] = encode_conditioning(self.components, [""]).to(c.device, c.dtype)
        empty = self._cache[key].expand(len(c))
        return empty.with_time_ids(c.time_ids) if c.has_added else empty
