"""Webdataset source: tar shards of ``<key>.jpg|png|jpeg|webp`` + ``<key>.txt`` pairs, as an IterableDataset.

Works with webdataset 1.x: we use its own ``tarfile_samples`` (whose grouper understands the end-of-shard
``{}`` marker that webdataset 1.0 emits — the diffusers LCM script's hand-copied grouper does not and
dies with ``KeyError: 'fname'``) and do shard splitting, shuffling and decoding here so every step is
seeded. Per epoch: shards are shuffled with ``(seed, epoch)``, dealt to DataLoader workers (and to
processes only with ``split_by_node=True``), samples pass a seeded shuffle buffer, and crop/flip/caption
dropout use a per-sample RNG. Re-iterating an epoch therefore gives the same stream, which is what
accelerate's ``skip_first_batches`` needs on resume.

Unusable samples (no image, no caption, undecodable image) are skipped and counted per worker; once at
least :data:`MIN_SEEN` samples were seen and the bad share exceeds ``max_bad_fraction``, a
:class:`UserError` stops the run. The first shard is probed at construction so wrong keys or a fully
broken shard fail before training starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from distill_diffusion.data.transforms import (
    ImageTransform,
    drop_caption,
    geometry_fields,
    item_rng,
    open_image,
)
from distill_diffusion.errors import UserError, require

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt",)
MIN_SEEN = 100
PROBE_SIZE = 16


def import_webdataset() -> Any:
    """Import webdataset or explain how to install the optional extra."""
    try:
        import webdataset
    except ImportError:
        raise UserError("data.source=webdataset needs the webdataset package; "
                        "pip install 'distill-diffusion[webdataset]'") from None
    return webdataset


def keys_for(column: str, default_name: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
    """Map data.image_column/caption_column to tar member extensions ("image"/"text" → the usual ones;
    otherwise the given extension(s), ';'-separated, e.g. ``caption`` or ``jpg;png``)."""
    if column == default_name:
        return defaults
    return tuple(k.strip().lower().lstrip(".") for k in column.split(";") if k.strip())


def expand_shards(spec: str) -> list[str]:
    """Brace-expand a shard spec; local shard files must exist (URLs and ``pipe:`` are not checked)."""
    wds = import_webdataset()
    urls = wds.shardlists.expand_urls(spec)
    require(bool(urls), f"data.shards={spec!r} expands to no shard; give a path like /data/{{00000..00009}}.tar")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).expanduser().is_file()]
    require(not missing, f"data.shards: {len(missing)} of {len(urls)} shard file(s) do not exist (first: {missing[0] if missing else ''}); "
            "fix the path or the brace range")
    return [str(Path(u).expanduser()) if u in local else u for u in urls]


class WebDatasetSource(IterableDataset):
    """Iterable dataset over webdataset shards; items ``{"pixel_values", "text"}`` like the map-style sources."""

    def __init__(
        self,
        shards: str,
        transform: ImageTransform,
        image_keys: tuple[str, ...] = IMAGE_KEYS,
        caption_keys: tuple[str, ...] = CAPTION_KEYS,
        proportion_empty_prompts: float = 0.0,
        max_bad_fraction: float = 0.05,
        max_train_samples: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        split_by_node: bool = False,
    ) -> None:
        self.urls = expand_shards(shards)
        self.transform, self.image_keys, self.caption_keys = transform, image_keys, caption_keys
        self.proportion_empty_prompts, self.max_bad_fraction = proportion_empty_prompts, max_bad_fraction
        self.max_train_samples, self.seed, self.epoch = max_train_samples, seed, 0
        self.shuffle_buffer, self.split_by_node = shuffle_buffer, split_by_node
        self.seen = self.bad = 0
        self._probe()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard order, shuffle buffer and augmentations are seeded by it)."""
        self.epoch = int(epoch)

    @property
    def bad_count(self) -> int:
        """Unusable samples skipped so far in this process."""
        return self.bad

    # -- reading ------------------------------------------------------------------------------------

    def _on_tar_error(self, exn: Exception) -> bool:
        warnings.warn(f"webdataset: skipping the rest of a shard after a read error: {exn!r}", stacklevel=2)
        return True

    def _raw_samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        wds = import_webdataset()
        return wds.tarfile_samples(({"url": u} for u in urls), handler=self._on_tar_error)

    def _first_key(self, sample: dict[str, Any], keys: tuple[str, ...]) -> Any:
        return next((sample[k] for k in keys if k in sample), None)

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Raw tar sample → item; raises on a missing key or an undecodable image."""
        data, caption = self._first_key(sample, self.image_keys), self._first_key(sample, self.caption_keys)
        if data is None or caption is None:
            raise KeyError(f"sample {sample.get('__key__')} lacks an image or a caption")
        rng = item_rng(self.seed, self.epoch, f"{sample.get('__url__')}/{sample.get('__key__')}")
        with open_image(data) as img:
            pixels, original, crop = self.transform.with_geometry(img, rng)
        text = caption.decode("utf-8").strip() if isinstance(caption, bytes) else str(caption)
        return {"pixel_values": pixels, "text": drop_caption(text, self.proportion_empty_prompts, rng), **geometry_fields(original, crop)}

    def _probe(self) -> None:
        """Read the start of the first shard: wrong keys or undecodable images fail now, not mid-run."""
        keys_seen: set[str] = set()
        good = total = 0
        for sample in self._raw_samples(self.urls[:1]):
            keys_seen.update(k for k in sample if not k.startswith("__"))
            total += 1
            try:
                self._decode(sample)
                good += 1
            except Exception:  # judged below from the keys seen
                pass
            if total >= PROBE_SIZE:
                break
        where = f"data.shards (first shard {self.urls[0]})"
        require(total > 0, f"{where} holds no samples; check that it is a tar of <key>.jpg + <key>.txt files")
        found = ", ".join(sorted(keys_seen)) or "none"
        require(bool(keys_seen & set(self.image_keys)), f"{where} has no image member ({'/'.join(self.image_keys)}; "
                f"found: {found}); set data.image_column to the image extension")
        require(bool(keys_seen & set(self.caption_keys)), f"{where} has no caption member ({'/'.join(self.caption_keys)}; "
                f"found: {found}); set data.caption_column to the caption extension")
        require(good > 0, f"{where}: none of the first {total} samples could be decoded; check the image files")

    # -- iteration ----------------------------------------------------------------------------------

    def _my_shards_and_quota(self) -> tuple[list[str], int | None, int]:
        wds = import_webdataset()
        rank, world, worker, num_workers = wds.utils.pytorch_worker_info()
        if not self.split_by_node:
            rank, world = 0, 1
        urls = list(self.urls)
        item_rng(self.seed, self.epoch, "shards").shuffle(urls)
        slot, slots = rank * num_workers + worker, world * num_workers
        mine = urls[slot::slots]
        quota = None
        if self.max_train_samples is not None:
            quota = self.max_train_samples // slots + (slot < self.max_train_samples % slots)
        return mine, quota, slot

    def _shuffled(self, samples: Iterator[dict[str, Any]], slot: int) -> Iterator[dict[str, Any]]:
        """Seeded shuffle buffer over raw (undecoded) samples."""
        rng = item_rng(self.seed, self.epoch, f"buffer/{slot}")
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= max(self.shuffle_buffer, 1):
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _count_bad(self, error: Exception) -> None:
        self.bad += 1
        if self.bad == 1:
            warnings.warn(f"webdataset: skipping unusable sample ({error}); later ones are counted silently", stacklevel=2)
        if self.seen >= MIN_SEEN and self.bad > self.max_bad_fraction * self.seen:
            raise UserError(f"data.shards: {self.bad} of {self.seen} samples ({self.bad / self.seen:.1%}) are unusable, "
                            f"over data.max_bad_fraction={self.max_bad_fraction}; repair the shards or raise "
                            "data.max_bad_fraction")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        urls, quota, slot = self._my_shards_and_quota()
        produced = 0
        for sample in self._shuffled(self._raw_samples(urls), slot):
            if quota is not None and produced >= quota:
                return
            self.seen += 1
            try:
                item = self._decode(sample)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as error:  # corrupt image or incomplete sample: count and skip
                self._count_bad(error)
                continue
            produced += 1
            yield item
        if urls and produced == 0 and self.seen > 0:
            raise UserError(f"data.shards: none of the {self.seen} samples read could be used; check the shards")
