"""Shared machinery of the map-style captioned-image datasets: bad-image accounting and per-item seeding.

How unusable images are measured (cheap first, exact where cheap):

* Up front, each source checks what it can afford: the image folder checks every file's structure
  (header, PNG CRCs, JPEG end marker: truncated files are found without decoding every pixel) and drops
  the unreadable ones; the `datasets` source fully decodes a small probe of the first items. These counts are known before training starts, so a dataset that is mostly or
  entirely broken fails with a :class:`UserError` before any output is written.
* Lazily, an item whose pixels fail to decode (truncated file, corrupt data) is recorded once by index
  and the load falls through to the next index, so a batch is never short. When the recorded count
  exceeds ``max_bad_fraction`` of all records, loading stops with a :class:`UserError`.
  With DataLoader workers each worker keeps its own count (a lower bound of the total).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import Dataset

from distill_diffusion.data.transforms import (
    ImageTransform,
    drop_caption,
    geometry_fields,
    item_rng,
    pick_caption,
)
from distill_diffusion.errors import UserError


class BadImageBudget:
    """Counts unusable images and enforces ``max_bad_fraction`` of ``num_records``."""

    def __init__(self, num_records: int, max_bad_fraction: float, where: str, initial_bad: int = 0) -> None:
        self.num_records = num_records
        self.max_bad_fraction = max_bad_fraction
        self.where = where
        self.bad_indices: set[int] = set()
        self.initial_bad = initial_bad
        self.check()

    @property
    def bad_count(self) -> int:
        """Unusable images found so far (up-front check plus lazy decode failures)."""
        return self.initial_bad + len(self.bad_indices)

    def record(self, index: int, error: BaseException) -> None:
        """Remember one undecodable item; warn the first time, fail when over budget."""
        if index in self.bad_indices:
            return
        self.bad_indices.add(index)
        if len(self.bad_indices) == 1:
            warnings.warn(f"{self.where}: skipping unreadable image (item {index}: {error}); later ones are counted silently",
                          stacklevel=2)
        self.check()

    def check(self) -> None:
        """Raise :class:`UserError` when no image is usable or the bad share is over the limit."""
        if self.num_records and self.bad_count >= self.num_records:
            raise UserError(f"{self.where}: none of the {self.num_records} images could be read; check the files "
                            "(are they images? truncated?) or point data.* at the right dataset")
        if self.bad_count > self.max_bad_fraction * self.num_records:
            share = self.bad_count / max(self.num_records, 1)
            raise UserError(f"{self.where}: {self.bad_count} of {self.num_records} images ({share:.1%}) are unreadable, "
                            f"over data.max_bad_fraction={self.max_bad_fraction}; repair or remove them, "
                            "or raise data.max_bad_fraction")


class CaptionedImageDataset(Dataset):
    """Map-style base: subclasses implement ``__len__`` and ``load(index) -> (PIL image, raw caption)``.

    Items are ``{"pixel_values": FloatTensor[3, R, R] in [-1, 1], "text": str}``. Augmentations and
    caption dropout are drawn from ``item_rng(seed, epoch, index)``; call :meth:`set_epoch` before each
    epoch so they change between epochs (and are reproduced exactly on resume).
    """

    def __init__(self, transform: ImageTransform, proportion_empty_prompts: float, budget: BadImageBudget,
                 seed: int = 0) -> None:
        self.transform = transform
        self.proportion_empty_prompts = proportion_empty_prompts
        self.budget = budget
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[Any, Any]:  # pragma: no cover - abstract
        """Return (PIL image not necessarily decoded yet, raw caption value) for ``index``."""
        raise NotImplementedError

    def raw_caption(self, index: int) -> Any:  # pragma: no cover - abstract
        """The raw caption value of ``index`` without opening its image."""
        raise NotImplementedError

    def captions(self) -> list[str]:
        """One caption per item, in order, no dropout, no image read (prompts for teacher-generated latents).

        A list-valued caption gives one entry drawn from the dataset's seed.
        """
        return [pick_caption(self.raw_caption(i), item_rng(self.seed, -1, f"caption/{i}")) for i in range(len(self))]

    @property
    def bad_count(self) -> int:
        """Unusable images found so far in this process."""
        return self.budget.bad_count

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations are drawn (DataLoader workers copy this at iterator creation)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = item_rng(self.seed, self.epoch, index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self.budget.bad_indices:
                continue
            try:
                pixels, text, geometry = self.decode(candidate, rng)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as error:  # corrupt/truncated data: count it and fall through
                self.budget.record(candidate, error)
                continue
            return {"pixel_values": pixels, "text": drop_caption(text, self.proportion_empty_prompts, rng), **geometry}
        self.budget.check()
        raise UserError(f"{self.budget.where}: no image could be read; check the files")

    def decode(self, index: int, rng: Any) -> tuple[torch.Tensor, str, dict[str, torch.Tensor]]:
        """Load, decode and transform one item (raises on unreadable data): pixels, caption, and the original size and
        crop offset (:func:`~distill_diffusion.data.transforms.geometry_fields`)."""
        img, caption = self.load(index)
        with img:
            pixels, original, crop = self.transform.with_geometry(img, rng)
        return pixels, pick_caption(caption, rng), geometry_fields(original, crop)

    def probe(self, count: int) -> None:
        """Decode the first ``count`` items now so a broken dataset fails before training starts."""
        rng = item_rng(self.seed, -1, "probe")
        for index in range(min(count, len(self))):
            try:
                self.decode(index, rng)
            except Exception as error:
                self.budget.record(index, error)
        if len(self) and len(self.budget.bad_indices) >= min(count, len(self)):
            raise UserError(f"{self.budget.where}: none of the first {min(count, len(self))} images could be read; "
                            "check the image column and the files")
