"""Prompt and image encoding: CLIP text embeddings (SD 1.x/2.x and SDXL), VAE latents and decoding.

``encode_prompt`` matches diffusers ``StableDiffusionPipeline.encode_prompt`` with ``clip_skip=None``: pad
to ``tokenizer.model_max_length`` (77), truncate, last hidden state (SD 2.x too: its text encoder
config already drops the last OpenCLIP layer), attention mask only when the text encoder config asks.
``encode_sdxl_prompt`` matches ``StableDiffusionXLPipeline.encode_prompt`` (Podell et al., arXiv:2307.01952, §2.1):
both tokenizers, the penultimate hidden states of both encoders concatenated, text_encoder_2's pooled projection as
``text_embeds``. :func:`encode_conditioning` picks between them from the components (a second text encoder or not).
Latents are ``(sample - shift_factor) * scaling_factor`` (Rombach et al., LDM, arXiv:2112.10752, Sec. 4.3 /
Appendix G: unit-variance latents); SD 1.x/2.x have no shift. A half-precision VAE whose config sets ``force_upcast``
(SDXL's overflows in fp16) encodes and decodes in fp32, as the SDXL pipelines do.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import Tensor

from distill_diffusion.models.conditioning import TIME_IDS_LENGTH, Conditioning
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


def encode_sdxl_prompt(tokenizers: tuple[Any, Any], text_encoders: tuple[Any, Any], prompts: list[str]) -> tuple[Tensor, Tensor]:
    """``(prompt_embeds [B, 77, D1 + D2], pooled [B, P])`` as ``StableDiffusionXLPipeline.encode_prompt`` (clip_skip
    None, one image per prompt), in text_encoder_2's dtype."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        out = encoder(tokenize_prompts(tokenizer, prompts).to(_device(encoder)), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    dtype = module_dtype(text_encoders[1])
    return torch.concat(hidden, dim=-1).to(dtype), pooled


def encode_conditioning(components: Any, prompts: list[str]) -> Conditioning:
    """The text part of the conditioning of ``prompts``: embeddings, and for SDXL the pooled embedding with
    placeholder time ids (the data's micro-conditioning replaces them: :func:`distill_diffusion.models.batch`)."""
    if getattr(components, "text_encoder_2", None) is None:
        return Conditioning(encode_prompt(components.tokenizer, components.text_encoder, prompts))
    embeds, pooled = encode_sdxl_prompt((components.tokenizer, components.tokenizer_2),
                                        (components.text_encoder, components.text_encoder_2), prompts)
    return Conditioning(embeds, pooled, torch.zeros(len(prompts), TIME_IDS_LENGTH, dtype=torch.long, device=embeds.device))


def _vae_dtype(vae: Any) -> torch.dtype:
    """The VAE's compute dtype: fp32 for a half-precision VAE whose config asks for ``force_upcast`` (SDXL's)."""
    dtype = module_dtype(vae)
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


#: fp32 copies of frozen fp16 VAEs under ``force_upcast``, made once per VAE (not every step) and freed with it.
_UPCAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _upcast(vae: Any) -> Any:
    """The VAE in its compute dtype: itself, or under ``force_upcast`` an fp32 copy, so the frozen fp16 module the
    precision policy keeps is never cast back and forth (the SDXL pipelines upcast the module in place instead)."""
    if _vae_dtype(vae) == module_dtype(vae):
        return vae
    copy_ = _UPCAST.get(vae)
    if copy_ is None or _device(copy_) != _device(vae):
        copy_ = _UPCAST[vae] = copy.deepcopy(vae).to(torch.float32).requires_grad_(False)
    return copy_


def checkpoint_decoder(vae: Any) -> None:
    """Gradient checkpointing in the VAE, for a loss on decoded images: diffusers checkpoints the decoder's mid block
    and each up block whenever gradients are on (Chen et al., arXiv:1604.06174), so a decode with gradients keeps only
    the blocks' inputs. The fp32 working copy (:func:`_upcast`) is made again from the module, flag included."""
    from distill_diffusion.models.checkpointing import enable_checkpointing

    enable_checkpointing(vae)
    _UPCAST.pop(vae, None)


def _scale_shift(vae: Any) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None)
    return float(vae.config.scaling_factor), float(shift) if shift is not None else 0.0


def encode_images(vae: Any, pixel_values: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scaled VAE latents of images in [-1, 1] ([B,3,H,W] -> [B,4,H/f,W/f]), sampled from the posterior."""
    scale, shift = _scale_shift(vae)
    vae = _upcast(vae)
    pixels = pixel_values.to(device=_device(vae), dtype=module_dtype(vae))
    latents = vae.encode(pixels).latent_dist.sample(generator)
    return (latents - shift) * scale


def decode_latents(vae: Any, latents: Tensor, clamp: bool = True) -> Tensor:
    """Images in [-1, 1] from scaled latents (the inverse of :func:`encode_images`), clamped unless ``clamp`` is false
    (a loss on the images whose gradient must reach every pixel, such as ADD's discriminator)."""
    scale, shift = _scale_shift(vae)
    vae = _upcast(vae)
    z = latents.to(device=_device(vae), dtype=module_dtype(vae)) / scale + shift
    images = vae.decode(z).sample
    return images.clamp(-1.0, 1.0) if clamp else images
