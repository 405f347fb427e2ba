"""The LADD discriminator's trainable heads: small conv heads on the backbone's features, conditioned on the noise
level and the pooled text embedding (Sauer et al., arXiv:2403.12015, §3.2 and App. B; projection conditioning as in
Miyato & Koyama, "cGANs with Projection Discriminator", arXiv:1802.05637)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: Size of the sinusoidal embedding of the discriminator's noise level.
TIME_DIM = 128


def _groups(width: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)


class Head(nn.Module):
    """Conv3x3 → GroupNorm → SiLU twice, then a per-position logit plus the projection ⟨φ(h), W·cond⟩; mean over positions."""

    def __init__(self, channels: int, cond_dim: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.SiLU(),
        )
        self.out = nn.Conv2d(width, 1, 1)
        self.project = nn.Linear(cond_dim, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, feature: Tensor, cond: Tensor) -> Tensor:
        h = self.body(feature)
        projection = (h * self.project(cond)[:, :, None, None]).sum(1, keepdim=True) * self.scale
        return (self.out(h) + projection).mean(dim=(1, 2, 3))


class DiscriminatorHeads(nn.Module):
    """One :class:`Head` per tapped block; the logit of a sample is the mean of its heads' logits."""

    def __init__(self, channels: dict[str, int], text_dim: int, width: int) -> None:
        super().__init__()
        self.taps = list(channels)
        self.heads = nn.ModuleDict({tap.replace(".", "_"): Head(ch, TIME_DIM + text_dim, width) for tap, ch in channels.items()})

    def condition(self, t: Tensor, c: Tensor) -> Tensor:
        """[sinusoidal(t), mean of the text embedding's tokens] in fp32 (the pooled text embedding of cached prompts)."""
        from diffusers.models.embeddings import get_timestep_embedding

        return torch.cat([get_timestep_embedding(t, TIME_DIM, flip_sin_to_cos=True), c.float().mean(dim=1)], dim=1)

    def forward(self, features: dict[str, Tensor], t: Tensor, c: Tensor) -> Tensor:
        cond = self.condition(t, c)
        logits = [self.heads[tap.replace(".", "_")](features[tap].float(), cond) for tap in self.taps]
        return torch.stack(logits).mean(0)
