"""Models: teacher loading (diffusers folder, hub, single file), the denoiser adapter and its conditioning, prompt/image
encoding."""

from distill_diffusion.models.conditioning import Conditioning
from distill_diffusion.models.denoiser import Denoiser, DenoiserOutput
from distill_diffusion.models.encode import (
    decode_latents,
    encode_conditioning,
    encode_images,
    encode_prompt,
    tokenize_prompts,
)
from distill_diffusion.models.loading import SDComponents, load_teacher
from distill_diffusion.models.sources import check_model_source, detect_family

__all__ = [
    "Conditioning",
    "Denoiser",
    "DenoiserOutput",
    "SDComponents",
    "check_model_source",
    "decode_latents",
    "detect_family",
    "encode_conditioning",
    "encode_images",
    "encode_prompt",
    "load_teacher",
    "tokenize_prompts",
]
