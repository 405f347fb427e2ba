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


def check_image_file(path: str | Path) -> bool:
    """Up-front validity check that also catches truncated files (interrupted copies, the usual damage).

    Cheap for the formats of large datasets: a PNG's chunks and CRCs are walked (``verify()``: reads the
    file, no inflate); a JPEG that ends with its EOI marker is accepted from the header, one that does not
    is decoded to decide. Other formats are fully decoded. Damage that keeps a file's structure intact
    (wrong bytes inside a JPEG scan) is left to the lazy check at training time.
    """
    try:
        with Image.open(path) as img:
            if img.width <= 0 or img.height <= 0:
                return False
            if img.format == "PNG":
                img.verify()
            elif img.format != "JPEG" or not _ends_with_jpeg_eoi(path):
                img.load()
        return True
    except Exception:  # any unreadable file is "bad", whatever PIL raises
        return False


def _ends_with_jpeg_eoi(path: str | Path, tail: int = 64) -> bool:
    """The end-of-image marker FF D9 within the last bytes (some writers pad after it)."""
    with open(path, "rb") as handle:
        handle.seek(0, io.SEEK_END)
        handle.seek(max(0, handle.tell() - tail))
        return b"\xff\xd9" in handle.read()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white (``convert("RGB")`` would expose the
    arbitrary colour stored under alpha=0, often black); high-bit-depth grey is scaled (:func:`to_8bit`)."""
    if img.mode == "RGB":
        return img
    if img.mode == "F" or img.mode.startswith("I"):
        return to_8bit(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images (modes ``I;16*``, ``I``, ``F``) as 8-bit ``L``.

    ``convert("L")`` clips instead of scaling, which turns a 16-bit photo nearly white. The rule:
    integer modes hold 16-bit values (a 16-bit PNG; Pillow opens it as ``I;16`` or ``I``) and are divided
    by 257 (65535 → 255); float images are taken as [0, 1] when their maximum is at most 1, otherwise
    stretched from their own minimum to maximum; NaN counts as 0.
    """
    values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if img.mode != "F":
        values = values / 257.0
    elif values.size and values.max() <= 1.0:
        values = values * 255.0
    else:
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        values = (values - low) * (255.0 / (high - low) if high > low else 0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resolution``, crop a square (centre or random), optionally flip.

    Matches the diffusers text-to-image scripts (``Resize`` + ``CenterCrop``/``RandomCrop`` +
    ``RandomHorizontalFlip`` + ``Normalize([0.5], [0.5])``) but honours every flag. :meth:`with_geometry` also gives
    what SDXL's micro-conditioning needs (Podell et al., arXiv:2307.01952, §2.2), recorded as diffusers'
    ``train_text_to_image_sdxl.py`` does: the original size (h, w) before resizing and the crop's top-left (top, left)
    in the resized image, measured from the right edge when the image is flipped (that script flips before cropping).
    """

    resolution: int
    center_crop: bool = True
    random_flip: bool = False
    interpolation: str = "bilinear"
    #: ``data``: record each image's own original size and crop; ``fixed``: record (R, R) and (0, 0), the values
    #: diffusers' SDXL pipelines use at inference (``micro_conditioning`` in DataConfig).
    micro_conditioning: str = "data"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.micro_conditioning not in ("data", "fixed"):
            raise ValueError("micro_conditioning must be 'data' or 'fixed'")

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        """Decode ``img`` and return a float tensor [3, R, R] in [-1, 1]."""
        return self.with_geometry(img, rng)[0]

    def with_geometry(self, img: Image.Image, rng: random.Random) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """``(pixels [3, R, R], original (h, w), crop top-left (top, left))``; the same draws as :meth:`__call__`."""
        img, original = self._resize(img)
        width = img.size[0]
        img, (top, left) = self._crop(img, rng)
        if self.random_flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = width - left - self.resolution
        array = np.asarray(img, dtype=np.uint8)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        if self.micro_conditioning == "fixed":
            return pixels, (self.resolution, self.resolution), (0, 0)
        return pixels, original, (top, left)

    def _target_size(self, width: int, height: int) -> tuple[int, int]:
        scale = self.resolution / min(width, height)
        return max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale))

    def _resize(self, img: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
        """The resized image and the original (height, width) as shown, before draft decoding and resizing."""
        width, height = img.size
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when that still covers the target size: a
        # large speed-up on web-scale photos; the resize below still sets the exact size.
        img.draft("RGB", self._target_size(*img.size))
        drafted = img.size
        img = to_rgb(ImageOps.exif_transpose(img))
        if img.size != drafted:  # an EXIF rotation by 90 or 270 degrees swapped the sides
            width, height = height, width
        size = self._target_size(*img.size)
        if img.size != size:
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
        return img, (height, width)

    def _crop(self, img: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
        width, height = img.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left, top = rng.randint(0, width - self.resolution), rng.randint(0, height - self.resolution)
        return img.crop((left, top, left + self.resolution, top + self.resolution)), (top, left)


def geometry_fields(original: tuple[int, int], crop_top_left: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The item fields SDXL's micro-conditioning is built from: ``original_size`` and ``crop_top_left``, int64 [2]."""
    return {"original_size": torch.tensor(original, dtype=torch.long), "crop_top_left": torch.tensor(crop_top_left, dtype=torch.long)}


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
