"""Evaluation metrics: FID/KID (torchmetrics accumulators, torch-fidelity Inception), CLIP score, image I/O.

Citations: FID, Heusel et al. 2017; KID, Bińkowski et al. 2018; CLIPScore, Hessel et al. 2021.
Heavier pieces (generation, benchmark tables, plots) live in their own modules and import these.
"""

from distill_diffusion.eval.clip_score import clip_score, load_clip
from distill_diffusion.eval.features import (
    INCEPTION_URL,
    INCEPTION_WEIGHTS_FILE,
    FeatureNet,
    default_inception_weights_path,
    load_inception,
    resolve_inception_weights,
)
from distill_diffusion.eval.fid import FIDEvaluator, FIDResult, frechet_distance
from distill_diffusion.eval.images import (
    ResizePolicy,
    list_image_files,
    load_image_folder,
    pil_to_uint8,
    resize_uint8,
    to_uint8,
    uint8_to_pil,
)
from distill_diffusion.eval.stats import FeatureStats

__all__ = [
    "INCEPTION_URL",
    "INCEPTION_WEIGHTS_FILE",
    "FIDEvaluator",
    "FIDResult",
    "FeatureNet",
    "FeatureStats",
    "ResizePolicy",
    "clip_score",
    "default_inception_weights_path",
    "frechet_distance",
    "list_image_files",
    "load_clip",
    "load_image_folder",
    "load_inception",
    "pil_to_uint8",
    "resize_uint8",
    "resolve_inception_weights",
    "to_uint8",
    "uint8_to_pil",
]
