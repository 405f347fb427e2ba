"""Turn a data batch into what every method trains on: fp32 latents ``x0`` and text embeddings ``c``."""

from __future__ import annotations

from typing import Any

import torch

from distill_diffusion.models.encode import encode_images, encode_prompt
from distill_diffusion.models.loading import SDComponents


@torch.no_grad()
def latents_and_embeddings(batch: dict[str, Any], components: SDComponents) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, c)`` from cached latents when the batch has them, else by encoding pixels and captions.

    The frozen VAE and text encoder run in the weight dtype; the latents come back in fp32 because the
    noising and parameterisation math is done in fp32 (the precision policy: docs/training.md).
    """
    # the first parameter, not diffusers' .device/.dtype properties (which walk the module: ~2.5 ms each)
    param = next(components.unet.parameters())
    device, dtype = param.device, param.dtype
    if "latents" in batch:
        x0 = batch["latents"].to(device)
        c = batch["prompt_embeds"].to(device)
    else:
        pixels = batch["pixel_values"].to(device, dtype=components.vae.dtype)
        x0 = encode_images(components.vae, pixels)
        c = encode_prompt(components.tokenizer, components.text_encoder, list(batch["text"]))
    return x0.float(), c.to(dtype)
