"""Image size and SDXL micro-conditioning a user may give ``generate``, checked against the model before it loads.

SDXL's UNet takes six time ids per image (Podell et al., arXiv:2307.01952, §2.2): original size (h, w), crop top-left
(top, left) and target size (h, w); diffusers' ``StableDiffusionXLPipeline`` takes them as ``original_size``,
``crops_coords_top_left`` and ``target_size`` (default: the output size, no crop). SD 1.x/2.x have no such input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill_diffusion.errors import require
from distill_diffusion.models.conditioning import TIME_IDS_LENGTH


def size_multiple(model: str) -> int:
    """Pixels an image side must be a multiple of: the VAE's downsampling times the UNet's (diffusers' own check is 8);
    8 for a model whose configs are not local (a hub id, a single file)."""
    from distill_diffusion.pipelines.loader import _local_config

    vae, unet = _local_config(model, "vae"), _local_config(model, "unet")
    if not vae or not unet:
        return 8
    factor = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["down_block_types"]) - 1)
    return math.lcm(factor, 8)


def check_size(model: str, height: int | None, width: int | None) -> None:
    """``--height`` / ``--width``, when given, must be positive multiples of :func:`size_multiple`."""
    multiple = size_multiple(model)
    for name, value in (("height", height), ("width", width)):
        require(value is None or (value > 0 and value % multiple == 0),
                f"--{name} {value} is not a positive multiple of {multiple} (the VAE's and UNet's downsampling of this "
                f"model); pass e.g. {multiple * max(1, round((value or multiple) / multiple))}")


def micro_conditioning_kwargs(family: str, time_ids: Sequence[int] | None) -> dict[str, Any]:
    """``StableDiffusionXLPipeline`` keyword arguments from six time ids; {} without them. Only SDXL takes them."""
    if time_ids is None:
        return {}
    require(family == "sdxl", "--time_ids is SDXL micro-conditioning; this model is SD 1.x/2.x, which has no time ids")
    require(len(time_ids) == TIME_IDS_LENGTH and all(v >= 0 for v in time_ids),
            f"--time_ids takes {TIME_IDS_LENGTH} numbers ≥ 0, got {len(time_ids)}: original height width, crop top left, "
            "target height width (e.g. 1024 1024 0 0 1024 1024)")
    ids = [int(v) for v in time_ids]
    return {"original_size": tuple(ids[0:2]), "crops_coords_top_left": tuple(ids[2:4]), "target_size": tuple(ids[4:6])}


def local_family(model: str) -> str | None:
    """The family of a local pipeline folder (None for a hub id or single file, read when it loads)."""
    from distill_diffusion.pipelines.loader import _local_config, model_family

    unet: Mapping[str, Any] = _local_config(model, "unet")
    return model_family(model, unet) if (Path(model).expanduser() / "model_index.json").is_file() else None
