"""Classifier-free guidance in its two conventions, and the LCM guidance-scale embedding.

Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598, eq. 6. Two conventions that differ
by one: diffusers/Imagen scale ``g`` (``g cond + (1-g) uncond``; g = 1 is no guidance) and the LCM/Ho &
Salimans weight ``w`` (``(1+w) cond - w uncond``; w = 0 is no guidance), so ``g = w + 1``. Users set ``g``
(``guidance_scale``, the diffusers name); the LCM/Meng math reads ``w``: the two functions below are the only
places that turn one into the other (docs/methods.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cfg(cond: Tensor, uncond: Tensor, guidance_scale: float | Tensor) -> Tensor:
    """diffusers/Imagen guidance ``uncond + g (cond - uncond)``, written ``g cond + (1-g) uncond``.

    The second form returns ``cond`` exactly at g = 1. ``guidance_scale`` may be a tensor broadcastable
    against ``cond`` (e.g. [B,1,1,1]).
    """
    return guidance_scale * cond + (1 - guidance_scale) * uncond


def cfg_lcm(cond: Tensor, uncond: Tensor, w: float | Tensor) -> Tensor:
    """LCM-paper guidance ``(1 + w) cond - w uncond`` (arXiv:2310.04378, Sec. 4.2; Ho & Salimans eq. 6)."""
    return (1 + w) * cond - w * uncond


def lcm_w_to_guidance_scale(w: float | Tensor) -> float | Tensor:
    """LCM weight w → diffusers guidance scale ``g = w + 1``."""
    return w + 1


def guidance_scale_to_lcm_w(guidance_scale: float | Tensor) -> float | Tensor:
    """diffusers guidance scale g → LCM weight ``w = g - 1``."""
    return guidance_scale - 1


def sample_lcm_w(batch_size: int, guidance_scale_min: float, guidance_scale_max: float, device: torch.device | str) -> Tensor:
    """``w ~ U[w_min, w_max]`` per sample, the guidance range a student is distilled for (LCM Alg. 1, arXiv:2310.04378;
    Meng et al., arXiv:2210.03142, stage one), given as diffusers scales: the bounds become w once, then one uniform draw."""
    w_min, w_max = guidance_scale_to_lcm_w(guidance_scale_min), guidance_scale_to_lcm_w(guidance_scale_max)
    return torch.rand(batch_size, device=device) * (w_max - w_min) + w_min


def guidance_embedding(w: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of ``w * 1000``, shape [B, dim]: the w-conditioning of a full LCM student.

    Identical to the LCM reference ``guidance_scale_embedding`` and diffusers'
    ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` (after VDM, Kingma et al. 2021), which
    a stock pipeline uses at inference with ``w = guidance_scale - 1``. Odd ``dim`` is zero-padded.
    """
    if dim < 4:
        raise ValueError(f"guidance_embedding needs dim >= 4, got {dim}")
    w = w.reshape(-1) * 1000.0
    half = dim // 2
    # Same operation order and dtypes as the reference so the values match bit for bit.
    scale = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=w.device) * -scale.to(w.device))
    args = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
