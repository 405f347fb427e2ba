"""FID/KID and CLIP score of a generated folder (its manifest's prompts) against a real image folder.

Feature spaces: ``"inception"`` (torch-fidelity's FID Inception, Heusel et al. 2017) or ``"clip:PATH"``:
the projected image embeddings of a transformers ``CLIPModel`` through :class:`FeatureNet` (the toy world
uses its tiny CLIP this way; the numbers are a Fréchet distance in that space, not Inception FID).
Single-process by design: call on the main process after generation is gathered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_diffusion.errors import require
from distill_diffusion.eval.clip_score import clip_projection_dim, clip_score, image_embeddings, load_clip
from distill_diffusion.eval.features import FeatureNet, resolve_inception_weights
from distill_diffusion.eval.fid import FIDEvaluator
from distill_diffusion.eval.generate import read_manifest
from distill_diffusion.eval.images import (
    ResizePolicy,
    list_image_files,
    load_image_folder,
    open_rgb,
    pil_to_uint8,
    resize_pil,
)
from distill_diffusion.eval.prompt_accuracy import PromptScorer
from distill_diffusion.pipelines.loader import check_device


class CLIPImageFeatures(nn.Module):
    """uint8 ``[B,3,H,W]`` → projected CLIP image embeddings ``[B, projection_dim]`` (processor resizes)."""

    def __init__(self, model: Any, processor: Any):
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return image_embeddings(self.model, self.processor, images)


def clip_feature_net(path: str, device: torch.device | str | None = None) -> FeatureNet:
    """A :class:`FeatureNet` over the image tower of the CLIP model at ``path`` (named ``clip:<path>``)."""
    model, processor = load_clip(path, device=device)
    dim = int(model.config.projection_dim)
    return FeatureNet(CLIPImageFeatures(model, processor), dim, name=f"clip:{Path(path).name}")


def feature_dim_of(feature: str | nn.Module, feature_dim: int | None = None) -> int:
    """The size of the feature space ``feature`` names, known before any weight loads (CLIP: its config).

    An unknown spec, or an injected module without ``feature_dim``, is a UserError.
    """
    if isinstance(feature, FeatureNet):
        return feature.num_features
    if isinstance(feature, nn.Module):
        require(feature_dim is not None, "an injected feature network needs feature_dim")
        return int(feature_dim)
    if feature.startswith("clip:"):
        return clip_projection_dim(feature[len("clip:") :])
    require(feature == "inception", f"FID feature {feature!r} is unknown; use 'inception' or 'clip:PATH' (a CLIPModel folder)")
    return feature_dim or 2048


def build_evaluator(
    feature: str | nn.Module = "inception",
    *,
    feature_dim: int | None = None,
    inception_weights: str | Path | None = None,
    resize: ResizePolicy | str | None = None,
    kid: bool = False,
    device: torch.device | str | None = None,
) -> FIDEvaluator:
    """``FIDEvaluator`` from a spec: ``"inception"``, ``"clip:PATH"`` or a module (``FeatureNet`` or with ``feature_dim``)."""
    policy = resize if isinstance(resize, ResizePolicy) else ResizePolicy.parse(resize)
    dim = feature_dim_of(feature, feature_dim)
    common = {"resize": policy, "kid": kid, "kid_subset_size": 1000, "device": device}
    if isinstance(feature, nn.Module):
        return FIDEvaluator(feature, dim, **common)
    if feature.startswith("clip:"):
        return FIDEvaluator(clip_feature_net(feature[len("clip:") :], device=device), dim, **common)
    return FIDEvaluator("inception", dim, weights_path=inception_weights, **common)


def check_sample_count(feature_dim: int, count: int, what: str, kid: bool) -> None:
    """Refuse, before any work, a set too small for FID (Σ singular below the feature dimension)."""
    if kid:
        require(count >= 2, f"only {count} {what} images; KID needs at least 2")
        return
    require(
        count >= max(2, feature_dim),
        f"FID is undefined with {count} {what} images for {feature_dim}-dim features; "
        "use at least that many images, or report KID instead (--kid)",
    )


def checked_evaluator(real_dir: str | Path, num_generated: int, feature: str | nn.Module = "inception",
                      **options: Any) -> FIDEvaluator:
    """:func:`build_evaluator` (same ``options``) after the checks that need no weights: a readable resize policy,
    a known feature space (and Inception's weights file), real images in ``real_dir``, and both sets large
    enough for FID (or KID)."""
    resize = options.get("resize")
    options["resize"] = resize if isinstance(resize, ResizePolicy) else ResizePolicy.parse(resize)
    num_real = len(list_image_files(real_dir))
    dim = feature_dim_of(feature, options.get("feature_dim"))
    if feature == "inception":
        resolve_inception_weights(options.get("inception_weights"))  # a missing weights file is the first thing to fix
    kid = bool(options.get("kid", False))
    check_sample_count(dim, num_generated, "generated", kid)
    check_sample_count(dim, num_real, "real", kid)
    return build_evaluator(feature, **options)


def folder_batches(folder: str | Path, files: Sequence[str], resize: ResizePolicy, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """uint8 batches of ``folder/<file>`` in the given order (generated images, manifest order)."""
    root = Path(folder)
    for start in range(0, len(files), batch_size):
        yield pil_to_uint8([resize_pil(open_rgb(root / f), resize) for f in files[start : start + batch_size]])


def prepare_real(
    evaluator: FIDEvaluator, real_dir: str | Path, cache_path: str | Path | None = None, batch_size: int = 64
) -> int:
    """Real-set statistics (cached at ``cache_path`` when given); returns the real image count."""
    stats = evaluator.prepare_real(
        load_image_folder(real_dir, evaluator.resize, batch_size=batch_size),
        cache_path=cache_path,
        source=str(Path(real_dir).expanduser().resolve()),
    )
    return stats.count


def score_generated(
    folder: str | Path,
    evaluator: FIDEvaluator | None = None,
    clip: tuple[Any, Any] | None = None,
    prompts: Sequence[str] | None = None,
    batch_size: int = 64,
    prompt_scorer: PromptScorer | None = None,
) -> dict[str, Any]:
    """FID/KID (real set already in ``evaluator``), CLIP score and ``prompt_scorer``'s metrics of a generated folder.

    Prompts come from the folder's manifest, or ``prompts`` (one per image, sorted file order) for a
    folder without one; a count mismatch is a UserError. The scorer's metrics go under ``prompt_scores``.
    """
    root = Path(folder).expanduser()
    if prompts is None:
        entries = read_manifest(root)
        files, texts = [e["file_name"] for e in entries], [e["prompt"] for e in entries]
    else:
        paths = list_image_files(root)
        require(
            len(paths) == len(prompts),
            f"{root} has {len(paths)} images but {len(prompts)} prompts were given; pass one prompt per image",
        )
        files, texts = [str(p.relative_to(root)) for p in paths], list(prompts)
    result: dict[str, Any] = {"num_images": len(files)}
    if evaluator is not None:
        evaluator.reset_fake()
        for batch in folder_batches(root, files, evaluator.resize, batch_size):
            evaluator.update(batch, real=False)
        result.update(evaluator.compute().to_dict())
    if clip is not None or prompt_scorer is not None:
        images = torch.cat(list(folder_batches(root, files, ResizePolicy(), batch_size)))
    if clip is not None:
        result["clip_score"], _ = clip_score(clip[0], clip[1], images, texts)
    if prompt_scorer is not None:
        result["prompt_scores"] = prompt_scorer(images, texts)
    return result


def evaluate_folder(
    generated: str | Path,
    real: str | Path | None = None,
    *,
    feature: str | nn.Module = "inception",
    feature_dim: int | None = None,
    inception_weights: str | Path | None = None,
    clip_model: str | None = None,
    resize: ResizePolicy | str | None = None,
    kid: bool = False,
    stats_cache: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """What ``distill-diffusion eval`` computes: FID/KID vs ``real`` (if given) and CLIP score (if ``clip_model``)."""
    require(real is not None or clip_model is not None, "nothing to compute; pass a real image folder (FID) and/or a CLIP model")
    check_device(device)
    count = len(read_manifest(generated)) if prompts is None else len(list_image_files(generated))
    require(
        prompts is None or count == len(prompts),
        f"{generated} has {count} images but {len(prompts or [])} prompts were given; pass one prompt per image",
    )
    evaluator = None
    if real is not None:
        evaluator = checked_evaluator(real, count, feature, feature_dim=feature_dim, inception_weights=inception_weights,
                                      resize=resize, kid=kid, device=device)  # fmt: skip
    clip = load_clip(clip_model, device=device) if clip_model else None
    if evaluator is not None:
        prepare_real(evaluator, real, stats_cache)
    return score_generated(generated, evaluator, clip, prompts)
