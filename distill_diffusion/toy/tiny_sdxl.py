"""Random-initialised tiny SDXL components, saved as a stock ``StableDiffusionXLPipeline`` folder.

The layout of SDXL base (Podell et al., arXiv:2307.01952, §2.1, Tab. 1) at a fraction of the size:

- ``text_encoder``: ``CLIPTextModel`` (hidden 32; SDXL: CLIP ViT-L, 768) and ``text_encoder_2``:
  ``CLIPTextModelWithProjection`` (hidden 48, projection 40; SDXL: OpenCLIP ViT-bigG, 1280/1280). The UNet attends to
  both encoders' penultimate hidden states concatenated, so ``cross_attention_dim`` = 32 + 48 = 80 (SDXL: 2048).
- UNet2DConditionModel with ``addition_embed_type="text_time"``: the pooled projection (40) and the six micro-
  conditioning ids, each embedded in ``addition_time_embed_dim`` = 8 (SDXL: 256), give
  ``projection_class_embeddings_input_dim`` = 6·8 + 40 = 88 (SDXL: 6·256 + 1280 = 2816). Down blocks
  Down/CrossAttn/CrossAttn and up blocks CrossAttn/CrossAttn/Up, as SDXL (no attention at the highest resolution),
  linear projections in the transformers, 1 layer per transformer (SDXL: 0/2/10).
- The SD toy's VAE (x4), with ``force_upcast`` set as in SDXL's VAE config; the SD toy's tokenizer for both encoders.
- ``EulerDiscreteScheduler`` with SDXL's training schedule (``scaled_linear`` 0.00085 -> 0.012, ``steps_offset`` 1,
  ``timestep_spacing`` leading), its config holding DDIM's ``clip_sample``/``set_alpha_to_one`` False as SDXL base's does.

Built in about a second; not trained here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from distill_diffusion.core.parameterization import PREDICTION_TYPES
from distill_diffusion.errors import require
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG, VAE_DOWNSAMPLE, _tiny_vae
from distill_diffusion.toy.tokenizer import build_tokenizer, write_tokenizer_files
from distill_diffusion.toy.vae import calibrate_scaling_factor

TEXT_HIDDEN_1, TEXT_HIDDEN_2, POOLED_DIM, TIME_EMBED_DIM = 32, 48, 40, 8


def tiny_sdxl_unet_config(resolution: int = 32) -> dict[str, Any]:
    """The tiny SDXL UNet's config (a plain dict)."""
    return {
        "sample_size": resolution // VAE_DOWNSAMPLE,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 48, 48),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 1),
        "cross_attention_dim": TEXT_HIDDEN_1 + TEXT_HIDDEN_2,
        "attention_head_dim": (2, 4, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + POOLED_DIM,
        "norm_num_groups": 8,
    }


def _text_config(vocab: int, bos: int, eos: int, hidden: int, projection: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, projection_dim=projection,
                          num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)


def build_tiny_sdxl_components(resolution: int = 32, seed: int = 0, prediction_type: str = "epsilon") -> dict[str, Any]:
    """Random-initialised tiny SDXL components: ``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``,
    ``tokenizer_2``, ``scheduler``. Deterministic for a seed; the caller's global torch RNG state is left untouched."""
    require(resolution % 16 == 0 and resolution >= 16, f"resolution={resolution} must be a multiple of 16 (VAE x4, UNet x4)")
    require(prediction_type in PREDICTION_TYPES, f"prediction_type={prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    tokenizer = build_tokenizer()
    ids = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_sdxl_unet_config(resolution))
        vae = _tiny_vae(resolution)
        # OpenAI CLIP ViT-L uses quick_gelu, OpenCLIP bigG gelu (their configs in the SDXL base repo)
        text_encoder = CLIPTextModel(_text_config(*ids, TEXT_HIDDEN_1, TEXT_HIDDEN_1, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(*ids, TEXT_HIDDEN_2, POOLED_DIM, "gelu"))
    vae.register_to_config(scaling_factor=calibrate_scaling_factor(vae, resolution, seed=seed), force_upcast=True)
    scheduler = EulerDiscreteScheduler(**{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
                                       prediction_type=prediction_type)
    # SDXL base's scheduler_config.json carries DDIM's keys too, so DDIMScheduler.from_config (validation, the toy's
    # calibration) gets clip_sample False instead of its default True, which would clamp unit-variance latents.
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False, sample_max_value=1.0)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer, "tokenizer_2": build_tokenizer(), "scheduler": scheduler}


def save_tiny_sdxl_pipeline(out_dir: str | Path, components: dict[str, Any] | None = None,
                            force_zeros_for_empty_prompt: bool = True, **kw: Any) -> Path:
    """Save a ``StableDiffusionXLPipeline`` folder (safetensors, no watermarker) loadable by stock
    ``StableDiffusionXLPipeline.from_pretrained``; ``components`` default to :func:`build_tiny_sdxl_components` ``(**kw)``."""
    parts = components if components is not None else build_tiny_sdxl_components(**kw)
    names = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    pipe = StableDiffusionXLPipeline(**{k: parts[k] for k in names}, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                                     add_watermarker=False)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(out / name)  # vocab.json/merges.txt for transformers 4.x too
    return out
