"""The batch collate function every training source shares (pixel items and latent-cache items alike)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from distill_diffusion.errors import require

#: Item fields stacked into batch tensors (those an item has).
STACKED = ("pixel_values", "latents", "prompt_embeds", "text_embeds", "original_size", "crop_top_left")


def collate_examples(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: tensors are stacked (contiguous, float32 pixels), ``text`` becomes a list.

    Works for pixel items (``pixel_values``, and the ``original_size``/``crop_top_left`` SDXL's micro-conditioning is
    built from) and cached items (``latents``, ``prompt_embeds``, and SDXL's ``text_embeds`` when cached).
    """
    require(len(examples) > 0, "collate_examples got an empty batch; check the dataset length and batch size")
    batch: dict[str, Any] = {"text": [str(e["text"]) for e in examples]}
    for key in STACKED:
        if key in examples[0]:
            batch[key] = torch.stack([e[key] for e in examples]).contiguous(memory_format=torch.contiguous_format)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].float()
    return batch
