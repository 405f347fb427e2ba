"""Image decoding and training transforms: RGB conversion, resize, crop, flip, [-1, 1] tensors, caption dropout.

Randomness (crop offset, flip, caption dropout, choice among several captions) comes from a per-item
``random.Random`` seeded by ``(seed, epoch, index)``, never from global RNG state, so the same item in the
same epoch gets the same augmentation whichever DataLoader worker loads it and whether or not the run was
resumed (resuming skips batches, which would shift a shared RNG stream).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def item_rng(seed: int, epoch: int, index: int | str) -> random.Random:
    """A private RNG for one item of one epoch (string seeding is stable across processes, unlike hash())."""
    return random.Random(f"{seed}/{epoch}/{index}")


def open_image(value: Any) -> Image.Image:
    """Open an image given as a path, raw bytes, a ``datasets`` ``{"bytes", "path"}`` dict or a PIL image.

    Only the header is read here; pixels are decoded by :meth:`ImageTransform.__call__` (``load()``).
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def check_image_header(path: str | Path) -> bool:
    """Cheap validity check: PIL parses the header only (no pixel decode), ~tens of µs per file."""
    try:
        with Image.open(path) as img:
            width, height = img.size
        return width > 0 and height > 0
    except Exception:  # any unreadable file is "bad", whatever PIL raises
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white (``convert("RGB")`` would expose the
    arbitrary colour stored under alpha=0, often black)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resolution``, crop a square (centre or random), optionally flip.

    Matches the diffusers text-to-image scripts (``Resize`` + ``CenterCrop``/``RandomCrop`` +
    ``RandomHorizontalFlip`` + ``Normalize([0.5], [0.5])``) but honours every flag.
    """

    resolution: int
    center_crop: bool = True
    random_flip: bool = False
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        """Decode ``img`` and return a float tensor [3, R, R] in [-1, 1]."""
        img = self._resize(img)
        img = self._crop(img, rng)
        if self.random_flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def _target_size(self, width: int, height: int) -> tuple[int, int]:
        scale = self.resolution / min(width, height)
        return max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale))

    def _resize(self, img: Image.Image) -> Image.Image:
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when that still covers the target size: a
        # large speed-up on web-scale photos; the resize below still sets the exact size.
        img.draft("RGB", self._target_size(*img.size))
        img = to_rgb(ImageOps.exif_transpose(img))
        size = self._target_size(*img.size)
        if img.size != size:
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
        return img

    def _crop(self, img: Image.Image, rng: random.Random) -> Image.Image:
        width, height = img.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left, top = rng.randint(0, width - self.resolution), rng.randint(0, height - self.resolution)
        return img.crop((left, top, left + self.resolution, top + self.resolution))


def pick_caption(value: Any, rng: random.Random) -> str:
    """A caption from a string, or one at random from a list of captions (COCO-style); None → ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, str)):
        captions = [str(c) for c in value if c is not None]
        return rng.choice(captions) if captions else ""
    if isinstance(value, np.ndarray):
        return pick_caption(value.tolist(), rng)
    return str(value)


def drop_caption(text: str, proportion_empty_prompts: float, rng: random.Random) -> str:
    """Caption dropout for classifier-free guidance training: "" with probability ``proportion_empty_prompts``."""
    if proportion_empty_prompts > 0 and rng.random() < proportion_empty_prompts:
        return ""
    return text
