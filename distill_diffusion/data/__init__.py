"""Captioned-image training data (image folder, `datasets`, webdataset), prompt sets and the latent cache."""

from distill_diffusion.data.build import (
    build_train_dataset,
    build_transform,
    check_source_fields,
    collate_examples,
)
from distill_diffusion.data.cache import (
    CachedLatentDataset,
    build_latent_cache,
    data_fingerprint,
    is_cache_valid,
    prepare_latent_cache,
)
from distill_diffusion.data.transforms import ImageTransform
from distill_diffusion.prompts import load_prompts

__all__ = [
    "CachedLatentDataset",
    "ImageTransform",
    "build_latent_cache",
    "build_train_dataset",
    "build_transform",
    "check_source_fields",
    "collate_examples",
    "data_fingerprint",
    "is_cache_valid",
    "load_prompts",
    "prepare_latent_cache",
]
