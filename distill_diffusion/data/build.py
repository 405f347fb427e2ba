"""DataConfig → training dataset (the batches are stacked by :func:`~distill_diffusion.data.collate.collate_examples`).

Each source uses exactly the DataConfig fields that mean something for it; a field set for another
source is refused: a silently ignored option trains another run than the one asked for, and nothing shows it
(docs/training.md, "Bad input").
"""

from __future__ import annotations

import dataclasses

from torch.utils.data import Dataset

from distill_diffusion.config import DataConfig
from distill_diffusion.data.synthetic import open_latents_dir
from distill_diffusion.data.transforms import ImageTransform
from distill_diffusion.errors import require

_DEFAULTS = DataConfig()
#: Fields that act on images and captions as read; a latent folder holds both encoded already.
_IMAGE_FIELDS = {"caption_column", "center_crop", "random_flip", "max_bad_fraction", "cache_latents", "cache_dir", "micro_conditioning"}
#: Which optional DataConfig fields each source reads (the rest must stay at their defaults).
_SOURCE_FIELDS = {
    "imagefolder": {"train_data_dir", "dataset_split", *_IMAGE_FIELDS},
    "hf": {"dataset_name", "dataset_config_name", "dataset_split", "image_column", *_IMAGE_FIELDS},
    "webdataset": {"shards", "image_column", *_IMAGE_FIELDS},
    "latents": {"latents_dir"},
}
_REQUIRED = {"imagefolder": "train_data_dir", "hf": "dataset_name", "webdataset": "shards", "latents": "latents_dir"}
_SOURCE_SPECIFIC = set().union(*_SOURCE_FIELDS.values())


def check_source_fields(cfg: DataConfig) -> None:
    """The source's required field is set and no other source's field is (it would be ignored)."""
    required = _REQUIRED[cfg.source]
    require(bool(getattr(cfg, required)), f"data.source={cfg.source} needs data.{required}; set it")
    for name in sorted(_SOURCE_SPECIFIC - _SOURCE_FIELDS[cfg.source]):
        value = getattr(cfg, name)
        if value != getattr(_DEFAULTS, name):
            users = [s for s, fields in _SOURCE_FIELDS.items() if name in fields]
            require(False, f"data.{name}={value!r} has no effect with data.source={cfg.source} (it is read by "
                    f"source {' / '.join(users)}); remove it or change data.source")


def build_transform(cfg: DataConfig, interpolation: str = "bilinear") -> ImageTransform:
    """The pixel transform from ``resolution``, ``center_crop`` and ``random_flip``."""
    return ImageTransform(cfg.resolution, center_crop=cfg.center_crop, random_flip=cfg.random_flip,
                          interpolation=interpolation, micro_conditioning=cfg.micro_conditioning)


def build_train_dataset(cfg: DataConfig, seed: int | None = 0, interpolation: str = "bilinear") -> Dataset:
    """Build the training dataset described by ``cfg``.

    Returns a map-style dataset for ``imagefolder`` and ``hf`` and an ``IterableDataset`` for
    ``webdataset``; items are ``{"pixel_values": FloatTensor[3, R, R] in [-1, 1], "text": str}``. For
    ``latents`` a :class:`~distill_diffusion.data.cache.CachedLatentDataset` over the folder, items
    ``{"latents", "prompt_embeds", "text"}`` (the batch format of ``data.cache_latents``). All
    randomness (max_train_samples subset, crop, flip, caption dropout) derives from ``seed`` and the
    epoch set with ``dataset.set_epoch(epoch)``. Bad inputs raise :class:`UserError` here, before training.
    """
    check_source_fields(cfg)
    seed = 0 if seed is None else int(seed)
    if cfg.source == "latents":
        return open_latents_dir(cfg.latents_dir, cfg.proportion_empty_prompts, seed, cfg.max_train_samples)
    common = dict(transform=build_transform(cfg, interpolation), proportion_empty_prompts=cfg.proportion_empty_prompts,
                  max_bad_fraction=cfg.max_bad_fraction, max_train_samples=cfg.max_train_samples, seed=seed)
    if cfg.source == "imagefolder":
        from distill_diffusion.data.imagefolder import ImageFolderDataset

        return ImageFolderDataset(cfg.train_data_dir, caption_column=cfg.caption_column, split=cfg.dataset_split,
                                  **common)
    if cfg.source == "hf":
        from distill_diffusion.data.hf import HFImageDataset, load_hf_dataset

        ds = load_hf_dataset(cfg.dataset_name, cfg.dataset_config_name, cfg.dataset_split)
        return HFImageDataset(ds, image_column=cfg.image_column, caption_column=cfg.caption_column,
                              name=cfg.dataset_name, **common)
    from distill_diffusion.data.wds import CAPTION_KEYS, IMAGE_KEYS, WebDatasetSource, keys_for

    return WebDatasetSource(cfg.shards, image_keys=keys_for(cfg.image_column, "image", IMAGE_KEYS),
                            caption_keys=keys_for(cfg.caption_column, "text", CAPTION_KEYS), **common)


def dataset_captions(cfg: DataConfig, seed: int | None = 0) -> list[str]:
    """The captions of the image dataset ``cfg`` describes, one per image in dataset order, with the source's own
    checks (and ``max_train_samples``), no caption dropout, no pixel decoded: prompts for ``prepare-synthetic``."""
    require(cfg.source in ("imagefolder", "hf"), f"captions are read from data.source imagefolder or hf, not "
            f"{cfg.source}; pass an image folder or a `datasets` dataset")
    dataset = build_train_dataset(dataclasses.replace(cfg, proportion_empty_prompts=0.0), seed)
    return dataset.captions()

