"""Calibrate the trained toy teacher: Fréchet distance, CLIP score and prompt accuracy of its DDIM samples.

Also measured: real images, and real images passed through the VAE (encode, decode), which is the floor
no sampler that decodes through this VAE can get under.

The numbers the toy world's bars are checked against (docs/toy_world.md, "toy-v3: build and calibration"): the
teacher's Fréchet distance at 4 DDIM steps should be clearly above (>= 2x) its 50-step value and many times above
at 1-2 steps, and its samples should match their captions (CLIP score with the matching caption above a
mismatched one).

Features are the toy CLIP's projected image embeddings (``toy.clip.clip_feature_net``), fed through the
same ``eval.FIDEvaluator`` as Inception for real models (Fréchet distance: Heusel et al. 2017); the
CLIP score is ``eval.clip_score`` (Hessel et al. 2021) with the toy CLIP; prompt accuracy (``acc_shape``,
``acc_colour``, ``acc_background``) is the share of images in which the toy classifier (``toy.classifier``)
sees what the prompt names, when the world has one. Fixed prompts and per-image seeds,
so step counts are compared on the same noise. Real images come from a seed the teacher never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distill_diffusion.toy.paths import TOY_GUIDANCE, ToyWorld

#: ``measure(uint8 images, prompts) -> {"fd", "clip_match", "clip_mismatch", "acc_*"}``.
Measure = Callable[[torch.Tensor, Sequence[str]], dict[str, float | None]]

#: Spacings of DDIM timesteps tried; the first is the headline (few-step DDIM is fairest with "trailing",
#: which starts at t = 999; the checkpoint's own "leading" starts 1-step sampling at t = 1).
SPACINGS = ("trailing", "leading")


def real_uint8(n: int, seed: int, resolution: int = 32) -> torch.Tensor:
    """``n`` toy images as uint8 ``[n,3,R,R]``."""
    from distill_diffusion.toy.world import toy_images

    arrays = np.stack([np.asarray(img) for img, _ in toy_images(n, resolution, seed)])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def mismatched(prompts: Sequence[str]) -> list[str]:
    """For each prompt, the next prompt in the list with a different text (a derangement of captions)."""
    out = []
    for i, prompt in enumerate(prompts):
        j = next((k for k in range(1, len(prompts)) if prompts[(i + k) % len(prompts)] != prompt), 0)
        out.append(prompts[(i + j) % len(prompts)])
    return out


@torch.no_grad()
def sample(pipe: Any, prompts: Sequence[str], steps: int, guidance_scale: float, seed: int, batch_size: int = 64) -> torch.Tensor:
    """uint8 samples of ``pipe``, image ``i`` from ``torch.Generator().manual_seed(seed + i)``."""
    from distill_diffusion.eval import to_uint8

    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type="pt").images
        chunks.append(to_uint8(images, "[0,1]"))
    return torch.cat(chunks)


def calibrate(
    world: ToyWorld,
    num_images: int = 128,
    steps: Sequence[int] = (1, 2, 4, 50),
    guidance_scale: float = TOY_GUIDANCE,
    num_real: int = 1024,
    seed: int = 0,
    progress: bool = True,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Teacher FD/CLIP/prompt-accuracy numbers at each DDIM step count and spacing, and the quality-bar ratios.

    ``num_images`` must exceed the CLIP projection dimension (the covariance needs that many samples);
    FD at small N is biased up, so the same N, prompts and seeds are used for every step count.
    ``teacher``: a pipeline folder other than ``world.teacher`` scored in the same world (the SDXL teacher,
    ``toy.build_xl``: diffusers picks its pipeline class from ``model_index.json``; its default micro-conditioning
    at 32x32 is original = target size and no crop, the native uncropped images).
    """
    from diffusers import DiffusionPipeline

    from distill_diffusion.toy.vae import reconstruct_uint8
    from distill_diffusion.toy.world import toy_images, toy_prompts

    pipe = DiffusionPipeline.from_pretrained(teacher or world.teacher, local_files_only=True, **_no_checker(teacher or world.teacher))
    pipe.set_progress_bar_config(disable=True)
    measure, feature = _measure_fn(world, num_real, seed)
    prompts = toy_prompts(num_images, seed)
    real_texts = [caption for _, caption in toy_images(num_images, 32, seed + 2)]
    real = real_uint8(num_images, seed + 2)
    # real images through the VAE and back: the floor of any sampler that decodes through this VAE
    results: dict[str, Any] = {"real": measure(real, real_texts), "vae_reconstruction": measure(reconstruct_uint8(pipe.vae, real), real_texts)}
    runs = [(s, k) for s in SPACINGS for k in steps if s == SPACINGS[0] or k < 25]
    results["ddim"] = _ddim_rows(pipe, runs, prompts, guidance_scale, seed, measure, progress)
    results.update(_ratios(results["ddim"], max(steps)))
    results["settings"] = {"num_images": num_images, "num_real": num_real, "guidance_scale": guidance_scale,
                           "feature": feature, "headline_spacing": SPACINGS[0], "seed": seed}
    return results


def _no_checker(folder: str | Path) -> dict[str, Any]:
    """``safety_checker=None`` for an SD folder (the toy's has none); SDXL pipelines have no such argument."""
    return {} if (Path(folder) / "text_encoder_2").is_dir() else {"safety_checker": None}


def _measure_fn(world: ToyWorld, num_real: int, seed: int) -> tuple[Measure, str]:
    """The scorer of a set of images against its prompts (Fréchet distance to ``num_real`` real images drawn from
    ``seed + 1``, CLIP score with the matching and a mismatched caption, the toy classifier's prompt accuracy when
    the world has one), and the name of its feature space."""
    from distill_diffusion.eval import FIDEvaluator, clip_score, load_clip
    from distill_diffusion.toy.classifier import (
        WEIGHTS_FILE,
        accuracy_fields,
        load_toy_classifier,
        prompt_accuracy,
    )
    from distill_diffusion.toy.clip import clip_feature_net

    model, processor = load_clip(str(world.clip))
    net = clip_feature_net(model)
    evaluator = FIDEvaluator(net, net.num_features)
    evaluator.prepare_real([real_uint8(num_real, seed + 1)])
    classifier = load_toy_classifier(world.classifier) if (world.classifier / WEIGHTS_FILE).is_file() else None

    def measure(images: torch.Tensor, texts: Sequence[str]) -> dict[str, float | None]:
        evaluator.reset_fake()
        evaluator.update(images, real=False)
        match, _ = clip_score(model, processor, images, texts)
        other, _ = clip_score(model, processor, images, mismatched(texts))
        scores = {"fd": round(float(evaluator.compute().fid), 4), "clip_match": round(match, 3), "clip_mismatch": round(other, 3)}
        # prompt faithfulness: does the classifier see the shape/colour/background each prompt names?
        return {**scores, **(accuracy_fields(prompt_accuracy(classifier, images, texts)) if classifier else {})}

    return measure, net.name


def _ratios(ddim: dict[str, dict[str, dict[str, float]]], top: int) -> dict[str, Any]:
    """FD at each step count over the many-step FD of the headline spacing, per spacing (the bars: >= 2x at 4
    steps, many x at 1-2)."""
    fd_top = ddim[SPACINGS[0]][str(top)]["fd"]
    by_spacing = {s: {k: round(v["fd"] / fd_top, 2) for k, v in runs.items()} for s, runs in ddim.items()}
    return {"ratios_by_spacing": by_spacing, "ratios_to_max_steps": by_spacing[SPACINGS[0]]}


def _ddim_rows(pipe: Any, runs: list[tuple[str, int]], prompts: Sequence[str], guidance_scale: float, seed: int,
               measure: Measure, progress: bool) -> dict[str, dict[str, dict[str, float]]]:
    """FD/CLIP (and seconds) of the teacher under DDIM for each (spacing, steps); same prompts and seeds for all."""
    from diffusers import DDIMScheduler

    rows: dict[str, dict[str, dict[str, float]]] = {}
    for spacing, k in tqdm(runs, desc="calibrate", disable=not progress):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
        t0 = time.perf_counter()
        images = sample(pipe, prompts, k, guidance_scale, seed=seed * 100_000)
        rows.setdefault(spacing, {})[str(k)] = {**measure(images, prompts), "seconds": round(time.perf_counter() - t0, 1)}
    return rows
