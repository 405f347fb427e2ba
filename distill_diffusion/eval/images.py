"""Image I/O for evaluation: float → uint8 rounding, the recorded resize policy, image-folder reading.

Every metric here consumes uint8 ``[B, 3, H, W]`` tensors that *we* rounded: torchmetrics'
``normalize=True`` path does ``(x * 255).byte()``, which truncates and shifts every pixel down by half a
level on average (a small but systematic FID bias).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from distill_diffusion.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
ValueRange = Literal["[0,1]", "[-1,1]"]


@dataclass(frozen=True)
class ResizePolicy:
    """How images are brought to a common size before feature extraction; recorded with every number.

    ``size=None`` keeps images as they are ("none"). Otherwise each image is (optionally) centre-cropped
    to a square and resized to ``size``×``size`` with PIL ``filter`` (bicubic or lanczos; PIL's
    downsampling filters are antialiased). The common text-to-image protocol generates at 512 and
    compares at 256 against the real images resized the same way.
    """

    size: int | None = None
    filter: str = "bicubic"
    center_crop: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise UserError(f"resize size {self.size!r} is invalid; pass a positive integer or 'none'")
        if self.filter not in _FILTERS:
            raise UserError(f"resize filter {self.filter!r} is unknown; use one of {sorted(_FILTERS)}")

    def describe(self) -> str:
        """Stable one-line name (stored in caches and results): ``none``, ``bicubic-256`` or
        ``lanczos-256-nocrop`` (resized without the centre crop, i.e. aspect ratio not kept)."""
        if self.size is None:
            return "none"
        return f"{self.filter}-{self.size}" + ("" if self.center_crop else "-nocrop")

    @classmethod
    def parse(cls, spec: str | int | None) -> ResizePolicy:
        """Parse what :meth:`describe` writes, plus a bare size (``"256"``, bicubic with centre crop)."""
        if spec is None or isinstance(spec, int):
            return cls(size=spec)
        text = spec.strip().lower()
        if text in ("", "none"):
            return cls()
        match = re.fullmatch(r"(?:(bicubic|lanczos)-)?(\d+)(-nocrop)?", text)
        if match is None:
            raise UserError(f"resize policy {spec!r} is not understood; use 'none', '256' or 'lanczos-256'")
        filt, size, nocrop = match.groups()
        return cls(size=int(size), filter=filt or "bicubic", center_crop=nocrop is None)


def to_uint8(images: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Float images in ``value_range`` (``"[0,1]"`` or ``"[-1,1]"``) → uint8, rounded to nearest.

    ``"[-1,1]"`` is what a VAE decodes to; ``"[0,1]"`` is what diffusers pipelines return with
    ``output_type="pt"``. Values are clamped first; the rounding matches diffusers ``numpy_to_pil``.
    uint8 input is returned unchanged. NaN/inf raise, since a cast would silently hide them.
    """
    if images.dtype == torch.uint8:
        return images
    if value_range not in ("[0,1]", "[-1,1]"):
        raise ValueError(f"value_range must be '[0,1]' or '[-1,1]', got {value_range!r}")
    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise UserError(
            "generated images contain NaN/inf values (often an fp16 VAE overflow); "
            "decode in float32 or use an fp16-safe VAE"
        )
    if value_range == "[-1,1]":
        x = (x + 1.0) / 2.0
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def pil_to_uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size → uint8 ``[B, 3, H, W]`` (converted to RGB first)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def uint8_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 ``[B, 3, H, W]`` → list of RGB PIL images."""
    arrays = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, mode="RGB") for a in arrays]


def resize_pil(image: Image.Image, policy: ResizePolicy) -> Image.Image:
    """Apply ``policy`` to one PIL image (no-op for "none" or an image already at the target size)."""
    if policy.size is None:
        return image
    w, h = image.size
    if policy.center_crop and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size == (policy.size, policy.size):
        return image
    return image.resize((policy.size, policy.size), resample=_FILTERS[policy.filter])


def resize_uint8(images: torch.Tensor, policy: ResizePolicy) -> torch.Tensor:
    """Apply ``policy`` to a uint8 ``[B, 3, H, W]`` batch through PIL, so real and generated images are
    resized by exactly the same code. Idempotent: images already at the target size pass through."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [B,3,H,W] images, got {images.dtype} {tuple(images.shape)}")
    size = policy.size
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return pil_to_uint8([resize_pil(im, policy) for im in uint8_to_pil(images)]).to(images.device)


def list_image_files(path: str | Path) -> list[Path]:
    """Image files under ``path`` (recursive, sorted, hidden files skipped); UserError if there are none."""
    root = Path(path).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.is_file() else "no such folder"
        raise UserError(f"image folder {root}: {problem}; pass a folder of .png/.jpg images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise UserError(
            f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "pass the folder holding the real images"
        )
    return files


def open_rgb(path: Path) -> Image.Image:
    """An image as RGB the way training reads it (:func:`~distill_diffusion.data.transforms.to_rgb`: 16-bit and
    float images scaled, not clipped; transparency on white), so real and training images match."""
    from distill_diffusion.data.transforms import to_rgb

    try:
        with Image.open(path) as im:
            rgb = to_rgb(im)
            return rgb.copy() if rgb is im else rgb  # an RGB file is returned as is: read it before it closes
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); remove or replace the file") from exc


def load_image_folder(
    path: str | Path, resize_policy: ResizePolicy, batch_size: int = 64, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield uint8 ``[B, 3, H, W]`` batches of the images under ``path`` after ``resize_policy``.

    With policy "none" every image must have the same size (a batch needs one shape): mixed sizes
    raise a UserError asking for a resize size. ``limit`` reads only the first ``limit`` files (sorted).
    """
    files = list_image_files(path)[:limit]
    expected: tuple[int, int] | None = None
    for start in range(0, len(files), batch_size):
        batch = []
        for file in files[start : start + batch_size]:
            image = resize_pil(open_rgb(file), resize_policy)
            expected = expected or image.size
            if image.size != expected:
                raise UserError(
                    f"image {file} is {image.size[0]}x{image.size[1]} but earlier images are "
                    f"{expected[0]}x{expected[1]}; pass a resize size (e.g. 256) so all images match"
                )
            batch.append(image)
        yield pil_to_uint8(batch)
