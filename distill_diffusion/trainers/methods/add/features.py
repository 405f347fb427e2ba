"""ADD's discriminator feature network: a frozen DINOv2 ViT on decoded images, read at several blocks.

Sauer et al., "Adversarial Diffusion Distillation", arXiv:2311.17042, §3.2: the discriminator is a frozen pretrained
feature network F (DINOv2 ViT-S, the best of their Table 1a) with small trainable heads on the token sequences of
several of its layers. The images are the decoded latents, resized to the ViT's resolution and normalised with the
ImageNet statistics DINOv2 was trained with; the CLS embedding of a real image serves as the heads' image condition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from distill_diffusion.errors import require

#: ``config.json`` model types this discriminator reads (transformers' ``Dinov2Model``).
VIT_TYPES = ("dinov2",)
#: DINOv2's input normalisation (ImageNet mean and std).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FIX = "pass a transformers Dinov2Model folder or hub id, e.g. facebook/dinov2-small"


def default_layers(num_layers: int) -> list[int]:
    """Four evenly spaced blocks ending at the last (ViT-S/14's 12 blocks: 3, 6, 9, 12)."""
    return sorted({max(1, round(num_layers * (i + 1) / 4)) for i in range(4)})


def check_vit_config(config: dict[str, Any], source: str, layers: list[int] | None, resolution: int) -> list[int]:
    """The blocks to read; one-line errors for a model that is not a DINOv2 ViT, blocks it lacks, or a resolution that
    is not a multiple of its patch size."""
    kind = config.get("model_type") or config.get("_class_name") or "unknown"
    require(kind in VIT_TYPES, f"method.feature_network={source} is a {kind} model, not a DINOv2 ViT (config.json model_type "
            f"{' or '.join(VIT_TYPES)}); {_FIX}")
    n = _positive_int(config, "num_hidden_layers", None, source)
    chosen = list(layers) if layers else default_layers(n)
    require(max(chosen) <= n and min(chosen) >= 1, f"method.feature_layers={chosen}: {source} has blocks 1..{n}; pick among them, "
            f"e.g. {','.join(map(str, default_layers(n)))}")
    patch = _positive_int(config, "patch_size", 14, source)
    require(resolution % patch == 0, f"method.feature_resolution={resolution} is not a multiple of the ViT's patch size {patch}; "
            f"pass e.g. {max(patch, resolution // patch * patch)}")
    return chosen


def _positive_int(config: dict[str, Any], key: str, default: int | None, source: str) -> int:
    """``config[key]`` (``default`` when absent) as a whole number >= 1: the ViT cannot be built from anything else."""
    value = config.get(key, default)
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"method.feature_network={source}: "
            f"config.json has {key}={value!r}, not a whole number >= 1 (a damaged or hand-edited config?); {_FIX}")
    return value


def check_local_feature_network(source: str, layers: list[int] | None, resolution: int) -> None:
    """Before any weights load: a local ``source`` must be a folder with a DINOv2 ``config.json`` (a hub id is checked
    once loaded)."""
    path = Path(source).expanduser()
    if not path.exists():
        return
    config_file = path / "config.json"
    require(path.is_dir() and config_file.is_file(), f"method.feature_network={source} is not a transformers model folder (no "
            f"config.json); {_FIX}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        config = None
    require(isinstance(config, dict), f"method.feature_network={source}: config.json is not a JSON object; {_FIX}")
    check_vit_config(config, source, layers, resolution)


class ViTFeatures:
    """Token features of chosen blocks and the CLS embedding of images in [-1, 1], through a frozen ``Dinov2Model``."""

    def __init__(self, model: Any, layers: list[int], resolution: int) -> None:
        self.model, self.layers, self.resolution = model, layers, resolution
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)  # CLS (and register) tokens
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def names(self) -> list[str]:
        return [f"block{i}" for i in self.layers]

    def __call__(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``({"block<i>": tokens [B, D, N]}, CLS [B, D])``; gradients flow to ``images`` unless under no_grad."""
        x = (images.float() + 1) / 2
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=x.to(dtype), output_hidden_states=True)
        tokens = {f"block{i}": out.hidden_states[i][:, self.skip:].transpose(1, 2) for i in self.layers}
        return tokens, out.pooler_output
