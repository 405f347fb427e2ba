"""Turn a data batch into what every method trains on: fp32 latents ``x0`` and their :class:`Conditioning` ``c``.

For a UNet with SDXL's added conditions the conditioning gets the pooled text embedding and the micro-conditioning
time ids (Podell et al., arXiv:2307.01952, §2.2), built per sample from the ``original_size`` and ``crop_top_left``
the data pipeline recorded (as diffusers' ``train_text_to_image_sdxl.py`` / ``train_lcm_distill_lora_sdxl.py``);
batches without them (synthetic latents) get the fixed values, original = target size and no crop.
"""

from __future__ import annotations

from typing import Any

import torch

from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import Conditioning, from_mapping, micro_conditioning_ids
from distill_diffusion.models.encode import encode_conditioning, encode_images
from distill_diffusion.models.loading import SDComponents


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel, as diffusers derives it (``2 ** (levels - 1)``; the toy VAE's is 4, SD's 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def batch_time_ids(batch: dict[str, Any], target_size: tuple[int, int]) -> torch.Tensor:
    """[B, 6] time ids of a batch: its recorded geometry, or original = target and crop (0, 0) where it has none."""
    if "original_size" in batch and "crop_top_left" in batch:
        return micro_conditioning_ids(batch["original_size"], batch["crop_top_left"], target_size)
    n = len(batch["latents"] if "latents" in batch else batch["pixel_values"])  # a batch may carry no captions
    return micro_conditioning_ids(torch.tensor([target_size] * n), torch.zeros(n, 2, dtype=torch.long), target_size)


@torch.no_grad()
def latents_and_embeddings(batch: dict[str, Any], components: SDComponents) -> tuple[torch.Tensor, Conditioning]:
    """``(x0, c)`` from cached latents when the batch has them, else by encoding pixels and captions.

    The frozen VAE and text encoders run in the weight dtype; the latents come back in fp32 because the
    noising and parameterisation math is done in fp32 (the precision policy: docs/training.md).
    """
    # the first parameter, not diffusers' .device/.dtype properties (which walk the module: ~2.5 ms each)
    param = next(components.unet.parameters())
    device, dtype = param.device, param.dtype
    if "latents" in batch:
        x0 = batch["latents"].to(device)
        c = from_mapping({**batch, "time_ids": torch.zeros(len(x0), 6, dtype=torch.long)})
    else:
        pixels = batch["pixel_values"].to(device, dtype=components.vae.dtype)
        x0 = encode_images(components.vae, pixels)
        c = encode_conditioning(components, list(batch["text"]))
    require(c.has_added or components.text_encoder_2 is None, "the cached latents have no pooled text embeddings "
            "(text_embeds), so they were made for an SD 1.x/2.x teacher; rebuild the cache or latent folder with this SDXL teacher")
    if c.has_added:
        size = tuple(batch["pixel_values"].shape[-2:]) if "pixel_values" in batch else tuple(
            s * vae_scale_factor(components.vae) for s in x0.shape[-2:])
        c = c.with_time_ids(batch_time_ids(batch, size))
    return x0.float(), c.to(device, dtype)
