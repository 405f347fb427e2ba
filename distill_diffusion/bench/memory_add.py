"""ADD's discriminator side in the training peak-memory estimate: the VAE decode and the DINOv2 read of the student's
samples, from meta-device models (:mod:`~distill_diffusion.bench.memory_methods` holds the student's side and the
phases).

ADD (Sauer et al., arXiv:2311.17042, §3.2) judges decoded images: in the generator phase the student's samples go
through the VAE decoder (fp32 weights under ``force_upcast``; its convolutions run in the autocast dtype; under
``--gradient_checkpointing`` its mid block and each up block are checkpointed, as diffusers does) and a frozen DINOv2
ViT (weight dtype) with gradients to their input, then the heads on the ViT's tokens; the backward adds two gradients
of the largest block input (and, checkpointed, the worst block's recomputed activations). The discriminator phase
reuses the generator's features of its samples and decodes and reads the real latents without gradients (a pass that
keeps nothing: bounded above by what the decoder's largest block and the read save with gradients); with exact R1 the
heads' backward runs twice (``create_graph``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_diffusion.errors import require

#: Published DINOv2 ViTs (Oquab et al., arXiv:2304.07193): hub id → (width, blocks, heads); patch 14.
DINOV2 = {"facebook/dinov2-small": (384, 12, 6), "facebook/dinov2-base": (768, 12, 12),
          "facebook/dinov2-large": (1024, 24, 16), "facebook/dinov2-giant": (1536, 40, 24)}


def dinov2_config(source: str) -> Any:
    """The ``Dinov2Config`` of ``method.feature_network``: a local folder's ``config.json``, or a published ViT's."""
    from transformers import Dinov2Config

    path = Path(source).expanduser() / "config.json"
    if path.is_file():
        return Dinov2Config.from_dict(json.loads(path.read_text()))
    require(source in DINOV2, f"method.feature_network {source!r} is neither a local folder with config.json nor one of "
            f"{', '.join(DINOV2)}; pass one of those")
    width, blocks, heads = DINOV2[source]
    return Dinov2Config(hidden_size=width, num_hidden_layers=blocks, num_attention_heads=heads, patch_size=14,
                        image_size=518, layerscale_value=1.0, use_swiglu_ffn=source.endswith("giant"))


def add_judge(unet_config: dict[str, Any], cfg: Any, batch: int, latent: int, dtype: torch.dtype, checkpointing: bool) -> Any:
    """The ``judge`` of :func:`~distill_diffusion.bench.memory_methods.adversarial_terms` for ADD's config ``cfg``."""
    from diffusers import AutoencoderKL
    from transformers import Dinov2Model

    from distill_diffusion.bench.memory_estimate import SD_VAE_CONFIG, dtype_width, profile_saved
    from distill_diffusion.bench.memory_methods import LADD_PHASES
    from distill_diffusion.trainers.methods.add.features import ViTFeatures, default_layers

    width = dtype_width(dtype)
    with torch.device("meta"):
        vae = AutoencoderKL(**{**SD_VAE_CONFIG, "latent_channels": unet_config["in_channels"]}).requires_grad_(False)
        vit_model = Dinov2Model(dinov2_config(cfg.feature_network)).requires_grad_(False)
    nn.Module.to(vit_model, dtype=dtype)
    vit = ViTFeatures(vit_model, cfg.feature_layers or default_layers(vit_model.config.num_hidden_layers), cfg.feature_resolution)
    z = torch.empty(batch, unet_config["in_channels"], latent, latent, device="meta", requires_grad=True)
    decoded: list[torch.Tensor] = []
    units = [vae.decoder.mid_block, *vae.decoder.up_blocks]
    decoder = profile_saved(vae, lambda: decoded.append(vae.decode(z).sample), units, dtype)
    decode, decode_extra = decoder.held(checkpointing)
    images = torch.empty(decoded[0].shape, device="meta", requires_grad=True)
    read = profile_saved(vit_model, lambda: vit(images), [], dtype).outside
    with torch.no_grad():
        tokens, _ = vit(images.detach())
    heads, head_saved = _heads(unet_config, cfg, vit, tokens, dtype)
    p, r1 = LADD_PHASES[1], 2 if cfg.r1_gamma > 0 and cfg.r1_approximate_sigma == 0 else 1
    vit_parameters = sum(q.numel() for q in vit_model.parameters())

    def judge(unet: nn.Module, profile: Any) -> tuple[int, int, int, dict[str, int]]:
        return heads, decode + read + head_saved[batch], decode_extra, {
            "frozen DINOv2 feature network, weight dtype": vit_parameters * width,
            f"{p}: tokens of real + generated images (fp32)": 2 * sum(t.numel() for t in tokens.values()) * 4,
            f"{p}: heads' activations held until the backward (twice with R1)": r1 * head_saved[2 * batch],
            f"{p}: no-grad decode and read of the real latents (transient, at most)": max(decoder.unit_saved) + read}

    return judge


def _heads(unet_config: dict[str, Any], cfg: Any, vit: Any, tokens: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[int, dict[int, int]]:
    """ADD's 1-D heads on the ViT's tokens: their parameters and what their forward saves at the batch and twice it."""
    from distill_diffusion.bench.memory_estimate import heads_saved
    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.trainers.methods.adversarial.heads import TIME_DIM, DiscriminatorHeads

    cond = pooled_text_width(unet_config) + (vit.width if cfg.image_conditioning else 0) + (TIME_DIM if cfg.disc_student_timestep else 0)
    with torch.device("meta"):
        heads = DiscriminatorHeads(dict.fromkeys(vit.names(), vit.width), cond, cfg.head_width, dims=1)
    batch, saved = next(iter(tokens.values())).shape[0], {}
    for b in (batch, 2 * batch):
        feats = {k: torch.cat([v] * (b // batch)).float().requires_grad_(True) for k, v in tokens.items()}
        saved[b] = heads_saved(heads, feats, cond, dtype)
    return sum(q.numel() for q in heads.parameters()), saved
