"""Test helpers: write a diffusers SD pipeline as one original-LDM-layout .safetensors file.

The inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint`` (diffusers/loaders/single_file_utils.py) for any number of levels and
layers per block, so the single-file loading path can be tested offline on the tiny model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _unet_key(key: str, lpb: int, up_has_attn: dict[int, bool]) -> str:
    parts = key.split(".")
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    if parts[0] == "mid_block":
        kind, idx, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return f"middle_block.{2 * idx}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    block, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(lpb + 1) * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
        slot = (lpb + 1) * block + idx + 1
        return f"input_blocks.{slot}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{slot}.1.{rest}"
    if kind == "upsamplers":
        return f"output_blocks.{(lpb + 1) * block + lpb}.{2 if up_has_attn[block] else 1}.{rest}"
    slot = (lpb + 1) * block + idx
    return f"output_blocks.{slot}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{slot}.1.{rest}"


def unet_to_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict in the LDM layout under ``model.diffusion_model.``."""
    lpb = unet.config.layers_per_block
    up_has_attn = {i: hasattr(block, "attentions") for i, block in enumerate(unet.up_blocks)}
    return {f"model.diffusion_model.{_unet_key(k, lpb, up_has_attn)}": v for k, v in unet.state_dict().items()}


def _vae_key(key: str, num_up: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    parts = key.split(".")
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        rest = ".".join(parts[4:])
        for old, new in _VAE_ATTN.items():
            rest = rest.replace(old + ".", new + ".")
        return f"{parts[0]}.mid.attn_1.{rest}"
    if parts[1] in ("down_blocks", "up_blocks"):
        level = int(parts[2]) if parts[1] == "down_blocks" else num_up - 1 - int(parts[2])
        name = "down" if parts[1] == "down_blocks" else "up"
        if parts[3] in ("downsamplers", "upsamplers"):
            return f"{parts[0]}.{name}.{level}.{name}sample.{'.'.join(parts[5:])}"
        return f"{parts[0]}.{name}.{level}.block.{'.'.join(parts[4:])}"
    return key


def vae_to_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict in the LDM layout under ``first_stage_model.`` (attention as 1x1 convs)."""
    num_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, num_up)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value
    return out


def text_encoder_to_ldm(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict under ``cond_stage_model.transformer.text_model.`` (SD 1.x layout)."""
    prefix = "cond_stage_model.transformer."
    return {
        prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v
        for k, v in text_encoder.state_dict().items()
    }


def save_ldm_single_file(pipe_dir: str | Path, out_path: str | Path) -> Path:
    """Write the pipeline in ``pipe_dir`` as one LDM-layout ``.safetensors`` file (SD 1.x style)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(pipe_dir), safety_checker=None)
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text_encoder_to_ldm(pipe.text_encoder)}
    out_path = Path(out_path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path))
    return out_path
