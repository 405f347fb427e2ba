"""Captioned-image training data (image folder, `datasets`, webdataset), prompt sets, the latent cache and
teacher-generated latent folders."""

from distill_diffusion.data.build import (
    build_train_dataset,
    build_transform,
    check_source_fields,
    dataset_captions,
)
from distill_diffusion.data.cache import (
    CachedLatentDataset,
    build_latent_cache,
    data_fingerprint,
    is_cache_valid,
    prepare_latent_cache,
)
from distill_diffusion.data.collate import collate_examples
from distill_diffusion.data.synthetic import open_latents_dir, write_synthetic_latents
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
    "dataset_captions",
    "is_cache_valid",
    "load_prompts",
    "open_latents_dir",
    "prepare_latent_cache",
    "write_synthetic_latents",
]
