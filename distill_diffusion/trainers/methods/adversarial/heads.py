"""The trainable heads of an adversarial discriminator: small convolutional heads on the features of a frozen network,
conditioned by projection (Miyato & Koyama, "cGANs with Projection Discriminator", arXiv:1802.05637).

LADD (Sauer et al., arXiv:2403.12015, §3.2 and App. B) puts 2-D conv heads on the teacher UNet's feature maps,
conditioned on the noise level and the pooled text embedding; ADD (arXiv:2311.17042, §3.2, after StyleGAN-T) puts 1-D
conv heads on a ViT's token sequences, conditioned on the text (and the real image's) embedding. One :class:`Head`
serves both: ``dims`` = 2 for feature maps [B, C, H, W], 1 for tokens [B, C, N]. Each head gives a logit per position
(token or feature-map pixel): the losses apply the hinge to each of them and sum over heads (ADD eqs. 2-3,
:func:`sum_over_heads`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from distill_diffusion.models.conditioning import Conditioning, as_conditioning

#: Size of the sinusoidal embedding of LADD's discriminator noise level.
TIME_DIM = 128


def _groups(width: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)


class Head(nn.Module):
    """Conv → GroupNorm → SiLU twice, then a per-position logit plus the projection ⟨φ(h), W·cond⟩: [B, positions]."""

    def __init__(self, channels: int, cond_dim: int, width: int, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.body = nn.Sequential(
            conv(channels, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.SiLU(),
            conv(width, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.SiLU(),
        )
        self.out = conv(width, 1, 1)
        self.project = nn.Linear(cond_dim, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, feature: Tensor, cond: Tensor) -> Tensor:
        h = self.body(feature)
        weight = self.project(cond).reshape(*cond.shape[:1], -1, *([1] * (h.ndim - 2)))
        projection = (h * weight).sum(1, keepdim=True) * self.scale
        return (self.out(h) + projection).flatten(1)


class DiscriminatorHeads(nn.Module):
    """One :class:`Head` per tapped feature; a sample's logits are its heads' per-position logits, one [B, positions]
    tensor per head (in tap order), unpooled: the loss reduces them (:func:`sum_over_heads`)."""

    def __init__(self, channels: dict[str, int], cond_dim: int, width: int, dims: int = 2) -> None:
        super().__init__()
        self.taps = list(channels)
        self.heads = nn.ModuleDict({tap.replace(".", "_"): Head(ch, cond_dim, width, dims) for tap, ch in channels.items()})

    def forward(self, features: dict[str, Tensor], cond: Tensor) -> list[Tensor]:
        return [self.heads[tap.replace(".", "_")](features[tap].float(), cond) for tap in self.taps]


def sum_over_heads(logits: list[Tensor], fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Σ_k mean over batch and positions of ``fn`` applied to head k's logits (ADD, arXiv:2311.17042, eqs. 2-3, the
    sum over the heads of StyleGAN-T's per-token losses); ``fn`` None: the logits themselves."""
    return torch.stack([(fn(k) if fn is not None else k).mean() for k in logits]).sum()


def sample_scores(logits: list[Tensor]) -> Tensor:
    """Each sample's score D(x) = Σ_k mean over positions of head k's logits, [B] (what R1 differentiates)."""
    return torch.stack([k.mean(1) for k in logits]).sum(0)


def rows(logits: list[Tensor], index: slice) -> list[Tensor]:
    """The rows ``index`` of every head's logits."""
    return [k[index] for k in logits]


def timestep_condition(t: Tensor) -> Tensor:
    """The sinusoidal embedding of integer timesteps [B] -> [B, TIME_DIM] in fp32 (diffusers' UNet convention)."""
    return get_timestep_embedding(t, TIME_DIM, flip_sin_to_cos=True).float()


def noise_text_condition(t: Tensor, c: Conditioning | Tensor) -> Tensor:
    """LADD's condition: [sinusoidal(t), pooled text] in fp32: the model's pooled text embedding where it has one
    (SDXL), else the mean of the text embedding's tokens (:meth:`Conditioning.pooled`), so cached prompts need nothing
    more. Its width is :func:`~distill_diffusion.models.conditioning.pooled_text_width`."""
    pooled = as_conditioning(c).pooled()
    return torch.cat([timestep_condition(t).to(pooled.device), pooled], dim=1)
