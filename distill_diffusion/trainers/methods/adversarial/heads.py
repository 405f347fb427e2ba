"""The trainable heads of an adversarial discriminator: small convolutional heads on the features of a frozen network,
conditioned by projection (Miyato & Koyama, "cGANs with Projection Discriminator", arXiv:1802.05637).

LADD (Sauer et al., arXiv:2403.12015, §3.2 and App. B) puts 2-D conv heads on the teacher UNet's feature maps,
conditioned on the noise level and the pooled text embedding; ADD (arXiv:2311.17042, §3.2, after StyleGAN-T) puts 1-D
conv heads on a ViT's token sequences, conditioned on the text (and the real image's) embedding. One :class:`Head`
serves both: ``dims`` = 2 for feature maps [B, C, H, W], 1 for tokens [B, C, N].
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

#: Size of the sinusoidal embedding of LADD's discriminator noise level.
TIME_DIM = 128


def _groups(width: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)


class Head(nn.Module):
    """Conv → GroupNorm → SiLU twice, then a per-position logit plus the projection ⟨φ(h), W·cond⟩; mean over positions."""

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
        return (self.out(h) + projection).flatten(1).mean(1)


class DiscriminatorHeads(nn.Module):
    """One :class:`Head` per tapped feature; the logit of a sample is the mean of its heads' logits."""

    def __init__(self, channels: dict[str, int], cond_dim: int, width: int, dims: int = 2) -> None:
        super().__init__()
        self.taps = list(channels)
        self.heads = nn.ModuleDict({tap.replace(".", "_"): Head(ch, cond_dim, width, dims) for tap, ch in channels.items()})

    def forward(self, features: dict[str, Tensor], cond: Tensor) -> Tensor:
        logits = [self.heads[tap.replace(".", "_")](features[tap].float(), cond) for tap in self.taps]
        return torch.stack(logits).mean(0)


def noise_text_condition(t: Tensor, c: Tensor) -> Tensor:
    """LADD's condition: [sinusoidal(t), mean of the text embedding's tokens] in fp32 (the pooled text embedding of
    cached prompts)."""
    return torch.cat([get_timestep_embedding(t, TIME_DIM, flip_sin_to_cos=True), c.float().mean(dim=1)], dim=1)
