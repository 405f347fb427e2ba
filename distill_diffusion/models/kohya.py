"""kohya-ss copies of a UNet LoRA: the key names ComfyUI, A1111 and kohya-ss' own scripts read.

SD 1.x/2.x: kohya-ss trains on the diffusers UNet, so its keys are the diffusers module names with ``_`` for ``.``
(``lora_unet_down_blocks_1_attentions_0_proj_in``), what diffusers' ``convert_state_dict_to_kohya`` writes.
SDXL: kohya-ss trains on the original (sgm) UNet of Podell et al. (arXiv:2307.01952, github.com/Stability-AI/
generative-models), so SDXL LoRAs name its modules (``lora_unet_input_blocks_4_1_proj_in``); :func:`sgm_module_name`
maps a diffusers module name to that layout, the inverse of diffusers' ``_maybe_map_sgm_blocks_to_diffusers`` and
``_convert_unet_lora_key`` (what ``StableDiffusionXLPipeline.load_lora_weights`` runs on such a file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from distill_diffusion.errors import UserError

#: Modules outside the block structure: diffusers name → sgm name.
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
#: Inside a ResBlock: diffusers ``ResnetBlock2D`` layer → sgm ``ResBlock`` layer.
_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(?P<where>down_blocks|up_blocks)\.(?P<b>\d+)\.(?P<kind>resnets|attentions|downsamplers|upsamplers)"
                    r"\.(?P<j>\d+)\.(?P<rest>.+)$")
_MID = re.compile(r"^mid_block\.(?P<kind>resnets|attentions)\.(?P<j>\d+)\.(?P<rest>.+)$")


def sgm_module_name(name: str, unet_config: Mapping[str, Any]) -> str:
    """The sgm UNet's name of the diffusers UNet module ``name`` (e.g. ``down_blocks.1.attentions.0.proj_in`` →
    ``input_blocks.4.1.proj_in``): each level has ``layers_per_block`` (down) or ``layers_per_block + 1`` (up) numbered
    blocks of [ResBlock, SpatialTransformer], a down level's downsampler is the level's last block, an up level's
    upsampler sits after its transformer (index 2, or 1 without attention)."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    per = int(unet_config["layers_per_block"]) + 1  # numbered blocks per level, both directions
    if (m := _MID.match(name)) is not None:
        index = 1 if m["kind"] == "attentions" else 2 * int(m["j"])
        return f"middle_block.{index}.{_inner(m['kind'], m['rest'])}"
    m = _BLOCK.match(name)
    if m is None:
        raise UserError(f"LoRA layer {name} has no kohya-ss (sgm) SDXL name; train LoRA targets inside the UNet's blocks")
    b, j, kind, rest = int(m["b"]), int(m["j"]), m["kind"], m["rest"]
    if m["where"] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * per + per - 1}.0.op"
        return f"input_blocks.{1 + b * per + j}.{0 if kind == 'resnets' else 1}.{_inner(kind, rest)}"
    if kind == "upsamplers":
        has_attention = "CrossAttn" in unet_config["up_block_types"][b]
        return f"output_blocks.{b * per + per - 1}.{2 if has_attention else 1}.conv"
    return f"output_blocks.{b * per + j}.{0 if kind == 'resnets' else 1}.{_inner(kind, rest)}"


def _inner(kind: str, rest: str) -> str:
    """A layer inside a ResBlock (renamed) or a SpatialTransformer (the same names in both UNets)."""
    if kind != "resnets":
        return rest
    if rest not in _RESNET:
        raise UserError(f"LoRA layer resnets.{rest} has no kohya-ss (sgm) SDXL name; target conv1, conv2, time_emb_proj "
                        "or conv_shortcut in the resnets")
    return _RESNET[rest]


def kohya_unet_keys(state: Mapping[str, Any], family: str, unet_config: Mapping[str, Any]) -> dict[str, str]:
    """``{peft key: kohya module prefix}`` for each ``<module>.lora_A/B.weight`` of a UNet LoRA state dict:
    ``lora_unet_`` + the module's (SDXL: sgm) name with ``_`` for ``.``."""
    out = {}
    for key in state:
        module = key.rsplit(".lora_", 1)[0]
        name = sgm_module_name(module, unet_config) if family == "sdxl" else module
        out[key] = "lora_unet_" + name.replace(".", "_")
    return out
