"""The LADD discriminator's backbone: the frozen teacher UNet, run only as far as its deepest tapped block.

Sauer et al., "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation", arXiv:2403.12015,
§3.2: the teacher itself is the feature network of the discriminator, in latent space, at a noise level of its own.
:func:`unet_features` repeats the first half of ``UNet2DConditionModel.forward`` (time embedding, ``conv_in``, the down
blocks, the mid block) and stops after the deepest tap, so the up blocks are never run; the features are the block
outputs themselves, not hook captures, so activation checkpointing (which recomputes only the resnets and transformer
blocks inside them, in the mode each ran in: :mod:`distill_diffusion.models.checkpointing`) never records them twice.
An SDXL UNet's added embedding (pooled text and micro-conditioning, ``addition_embed_type="text_time"``) is added to
the time embedding through the UNet's own ``get_aug_embed``, as its forward does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import Conditioning, as_conditioning

#: Config fields of UNets whose forward adds inputs this backbone does not feed (class labels, image embeddings), and
#: the ``addition_embed_type`` it does feed (SDXL's).
_UNSUPPORTED = ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type")
_SUPPORTED_ADDITION = "text_time"


def tap_names(config: dict[str, Any]) -> list[str]:
    """Every block this backbone can tap: ``down_blocks.<i>`` and ``mid_block`` (when the UNet has one)."""
    names = [f"down_blocks.{i}" for i in range(len(config["down_block_types"]))]
    return names + (["mid_block"] if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None else [])


def check_taps(config: dict[str, Any], taps: list[str]) -> None:
    """Taps the UNet has, and a UNet whose forward this backbone reproduces; one-line errors otherwise."""
    valid = tap_names(config)
    require(bool(taps), f"method.disc_blocks is empty; tap one or more of: {', '.join(valid)}")
    unknown = [t for t in taps if t not in valid]
    require(not unknown, f"method.disc_blocks {unknown} are not blocks of this UNet; tap one or more of: {', '.join(valid)}")
    extra = [k for k in _UNSUPPORTED if config.get(k) and not (k == "addition_embed_type" and config[k] == _SUPPORTED_ADDITION)]
    require(not extra, f"the teacher UNet has {', '.join(extra)}: an SD 1.x/2.x or SDXL UNet is needed as the discriminator "
            "backbone; use another teacher")


def tap_channels(config: dict[str, Any], tap: str) -> int:
    """Channels of a tapped block's output (a down stage's ``block_out_channels``; the mid block's is the last)."""
    channels = list(config["block_out_channels"])
    return channels[-1] if tap == "mid_block" else channels[int(tap.split(".")[1])]


def unet_features(unet: Any, z: Tensor, t: Tensor, c: Conditioning | Tensor, taps: list[str]) -> dict[str, Tensor]:
    """The outputs of the tapped blocks of ``unet`` on ``(z, t, c)``, as its full forward computes them.

    ``unet`` is the unwrapped ``UNet2DConditionModel`` (a DDP wrapper has no ``down_blocks``); inputs are cast to its
    dtype. Gradients flow to ``z`` unless the caller runs this under ``torch.no_grad()``.
    """
    if hasattr(unet, "unshard"):  # FSDP2: the blocks are called one by one, bypassing the root forward that gathers its shards
        unet.unshard()
    dtype = next(unet.parameters()).dtype
    kwargs = as_conditioning(c).unet_kwargs(dtype)
    z, c = z.to(dtype), kwargs["encoder_hidden_states"]
    t = torch.as_tensor(t, device=z.device).expand(z.shape[0])
    emb = unet.time_embedding(unet.time_proj(t).to(dtype))
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=c, added_cond_kwargs=kwargs.get("added_cond_kwargs", {}))
    emb = emb + aug if aug is not None else emb
    h = unet.conv_in(z)
    features, wanted = {}, set(taps)
    for i, block in enumerate(unet.down_blocks):
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=c)
        else:
            h, _ = block(hidden_states=h, temb=emb)
        if f"down_blocks.{i}" in wanted:
            features[f"down_blocks.{i}"] = h
        if wanted <= features.keys():
            return features
    features["mid_block"] = unet.mid_block(h, emb, encoder_hidden_states=c)
    return features
