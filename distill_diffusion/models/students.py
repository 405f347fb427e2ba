"""Students built from the teacher's UNet: the w-conditioned copy for guidance distillation.

Luo et al., "Latent Consistency Models", arXiv:2310.04378, Sec. 4.2, and Meng et al., "On Distillation of
Guided Diffusion Models", arXiv:2210.03142, Sec. 3: a student that takes the guidance weight w as an input
(``time_embedding.cond_proj`` on a sinusoidal embedding of w), so one forward replaces the teacher's cond and
uncond passes.
"""

from __future__ import annotations

from typing import Any

import torch

from distill_diffusion.errors import UserError
from distill_diffusion.models.loading import SDComponents


def build_w_student(components: SDComponents, proj_dim: int) -> Any:
    """The teacher's UNet config plus ``time_cond_proj_dim``, teacher weights loaded, the new projection random.

    LCM (arXiv:2310.04378, Sec. 4.2) conditions the student on w through ``time_embedding.cond_proj``
    (the only key the teacher lacks).
    """
    return build_student(components, time_cond_proj_dim=proj_dim)


def build_student(components: SDComponents, **config_overrides: Any) -> Any:
    """A trainable fp32 copy of the teacher's UNet (config changed by ``config_overrides``), teacher weights loaded.

    From the teacher's fp32 weights as stored (not the frozen teacher's fp16/bf16 copy, which would start the
    student from rounded weights). Keys the new config adds (a w-embedding's ``cond_proj``) stay as initialised.
    """
    from diffusers import UNet2DConditionModel

    teacher = components.unet
    device = next(teacher.parameters()).device
    with torch.device(device):
        student = UNet2DConditionModel.from_config(teacher.config, **config_overrides)
    missing, unexpected = student.load_state_dict(components.fp32_unet_state(), strict=False)
    added = {"time_embedding.cond_proj.weight"} if config_overrides.get("time_cond_proj_dim") else set()
    if set(missing) - added or unexpected:
        raise UserError(f"the teacher UNet does not fit a copy of itself (missing {missing[:3]}, unexpected {unexpected[:3]}); use a UNet2DConditionModel teacher")
    return student.requires_grad_(True)  # from_config builds fp32 weights; the state loaded into them is fp32
