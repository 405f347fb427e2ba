"""CLIP score of images against their prompts, computed from a transformers ``CLIPModel``.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning") as
torchmetrics defines it: 100 · max(cos(E_image, E_text), 0) per pair, averaged (torchmetrics uses
``openai/clip-vit-large-patch14``; papers often report the raw cosine with open_clip ViT-g/14 instead, so
state the model with the number). We do not call torchmetrics ``CLIPScore``: 1.9.0 crashes with
transformers ≥ 5 (``get_*_features`` return a ModelOutput there) and refuses most local paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill_diffusion.errors import UserError
from distill_diffusion.pipelines.loader import reject_pickle_weights

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def _clip_source(name_or_path: str) -> str:
    """The local folder or hub id to load a CLIP model from; a missing path or pickle-only folder is a UserError."""
    local = Path(name_or_path).expanduser()
    if not local.is_dir() and not _HUB_ID.match(name_or_path):
        raise UserError(
            f"CLIP model {name_or_path}: no such folder; pass a folder saved with CLIPModel.save_pretrained "
            f"or a hub id such as {DEFAULT_CLIP_MODEL}"
        )
    reject_pickle_weights(local, "CLIP model folder")
    return str(local) if local.is_dir() else name_or_path


def _load_error(name_or_path: str, exc: Exception) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"cannot load CLIP model {name_or_path} ({reason}); pass a local CLIP folder "
        "(model + processor files) or a reachable hub id"
    )


def clip_projection_dim(name_or_path: str) -> int:
    """The image-embedding size of a CLIP model, from its config alone (so sample counts are checked pre-load)."""
    from transformers import CLIPConfig

    try:
        return int(CLIPConfig.from_pretrained(_clip_source(name_or_path)).projection_dim)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, exc) from exc


def load_clip(
    name_or_path: str = DEFAULT_CLIP_MODEL,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Load ``(CLIPModel, CLIPProcessor)`` from a local folder or a hub id; frozen, in eval mode.

    A missing local path, a folder with only pickle weights, or a hub id that cannot be fetched (offline,
    typo) is a UserError.
    """
    from transformers import CLIPModel, CLIPProcessor

    source = _clip_source(name_or_path)
    try:
        # use_safetensors: never unpickle weights from a hub repo either (a local folder is checked above).
        model = CLIPModel.from_pretrained(source, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, exc) from exc
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), processor


def _embeddings(output: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features``: a tensor (transformers 4.x) or a ModelOutput whose
    ``pooler_output`` holds the projection (transformers 5.x)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find embeddings in {type(output).__name__}; expected a tensor or pooler_output")


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _max_text_length(model: Any, tokenizer: Any) -> int:
    """CLIP's position-embedding count (77); tokenizers without a saved limit report ~1e30."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    limit = getattr(text_config, "max_position_embeddings", None)
    return int(limit or min(getattr(tokenizer, "model_max_length", 77), 77))


def image_embeddings(model: Any, processor: Any, images: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings of uint8 ``[B,3,H,W]`` images (the processor resizes, crops, normalises)."""
    device, dtype = _model_device_dtype(model)
    pixels = processor.image_processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
    return _embeddings(model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype)))


def text_embeddings(model: Any, processor: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Projected text embeddings; prompts longer than CLIP's context are truncated (as torchmetrics does)."""
    device, _ = _model_device_dtype(model)
    tokens = processor.tokenizer(
        list(prompts),
        padding=True,
        truncation=True,
        max_length=_max_text_length(model, processor.tokenizer),
        return_tensors="pt",
    )
    tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    return _embeddings(model.get_text_features(**tokens))


@torch.no_grad()
def clip_score(
    model: Any, processor: Any, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 32
) -> tuple[float, torch.Tensor]:
    """CLIPScore (Hessel et al. 2021; torchmetrics' scaling): returns ``(mean, per_image)``.

    ``model``: a transformers ``CLIPModel`` or anything with ``get_image_features(pixel_values=...)``
    and ``get_text_features(input_ids=..., attention_mask=...)``. ``processor``: a ``CLIPProcessor`` or
    any object with ``.tokenizer`` and ``.image_processor``. ``images``: uint8 ``[N,3,H,W]`` (convert
    with ``eval.images.to_uint8``; the processor rescales by 1/255 itself), one prompt per image.
    ``per_image[i] = 100 · max(cos(E(images[i]), E(prompts[i])), 0)``, float32 on CPU.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"clip_score takes uint8 [N,3,H,W] images, got {images.dtype} {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")
    if images.shape[0] == 0:
        raise ValueError("clip_score needs at least one image")
    scores = []
    for start in range(0, images.shape[0], batch_size):
        img = image_embeddings(model, processor, images[start : start + batch_size]).float()
        txt = text_embeddings(model, processor, prompts[start : start + batch_size]).float()
        cos = F.cosine_similarity(img, txt.to(img.device), dim=-1)
        scores.append((100.0 * cos.clamp(min=0)).cpu())
    per_image = torch.cat(scores)
    return float(per_image.mean()), per_image
