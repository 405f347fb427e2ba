"""Cached-latent batches shaped for the tiny SD or the tiny SDXL teacher, so a method test can run once per family."""

from __future__ import annotations

import torch

#: Text widths of the tiny teachers: SD's cross-attention; SDXL's concatenated hidden states and pooled projection.
TEXT_WIDTH = {"sd1": 64, "sdxl": 80}
POOLED_WIDTH = 40


def latent_batch(n: int = 4, seed: int = 0, family: str = "sd1") -> dict[str, torch.Tensor]:
    """Latents and prompt embeddings as a latent cache holds them (SDXL: with the pooled ``text_embeds``; the time ids
    are then built from the resolution, as for cached latents without recorded geometry)."""
    g = torch.Generator().manual_seed(seed)
    out = {"latents": torch.randn(n, 4, 8, 8, generator=g), "prompt_embeds": torch.randn(n, 77, TEXT_WIDTH[family], generator=g)}
    if family == "sdxl":
        out["text_embeds"] = torch.randn(n, POOLED_WIDTH, generator=g)
    return out
