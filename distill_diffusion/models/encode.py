"""Prompt and image encoding for SD 1.x/2.x: CLIP text embeddings, VAE latents and decoding.

``encode_prompt`` matches diffusers ``StableDiffusionPipeline.encode_prompt`` with ``clip_skip=None``: pad
to ``tokenizer.model_max_length`` (77), truncate, last hidden state (SD 2.x too: its text encoder
config already drops the last OpenCLIP layer), attention mask only when the text encoder config asks.
Latents are ``(sample - shift_factor) * scaling_factor`` (Rombach et al., LDM, arXiv:2112.10752, Sec. 4.3 /
Appendix G: unit-variance latents); SD 1.x/2.x have no shift.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill_diffusion.models.denoiser import module_dtype


def _tokenize(tokenizer: Any, prompts: list[str]) -> Any:
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


def tokenize_prompts(tokenizer: Any, prompts: list[str]) -> Tensor:
    """Token ids [B, model_max_length], padded and truncated like the SD pipelines."""
    return _tokenize(tokenizer, prompts).input_ids


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def encode_prompt(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> Tensor:
    """Text embeddings [B, 77, D] in the text encoder's dtype (no CFG doubling; encode ``""`` for uncond)."""
    tokens = _tokenize(tokenizer, prompts)
    device = _device(text_encoder)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def _scale_shift(vae: Any) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None)
    return float(vae.config.scaling_factor), float(shift) if shift is not None else 0.0


def encode_images(vae: Any, pixel_values: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scaled VAE latents of images in [-1, 1] ([B,3,H,W] -> [B,4,H/f,W/f]), sampled from the posterior."""
    scale, shift = _scale_shift(vae)
    pixels = pixel_values.to(device=_device(vae), dtype=module_dtype(vae))
    latents = vae.encode(pixels).latent_dist.sample(generator)
    return (latents - shift) * scale


def decode_latents(vae: Any, latents: Tensor, clamp: bool = True) -> Tensor:
    """Images in [-1, 1] from scaled latents (the inverse of :func:`encode_images`), clamped unless ``clamp`` is false
    (a loss on the images whose gradient must reach every pixel, such as ADD's discriminator)."""
    scale, shift = _scale_shift(vae)
    z = latents.to(device=_device(vae), dtype=module_dtype(vae)) / scale + shift
    images = vae.decode(z).sample
    return images.clamp(-1.0, 1.0) if clamp else images
