"""Build the toy SDXL teacher once, inside a built toy world, and cache it in ``<world>/xl/``.

``distill-diffusion toy build --sdxl`` / :func:`ensure_toy_xl_teacher`. The SDXL layout (Podell et al.,
arXiv:2307.01952: two text encoders, the second with a projection; a UNet with ``addition_embed_type="text_time"``)
at the toy's size (``toy.tiny_sdxl``), with the SD world's trained VAE and its tokenizer for both encoders, trained
exactly as the SD teacher is (``toy.build``: the engine's fine-tune, Min-SNR-5, EMA, caption dropout, the same
budget) on the toy examples drawn on canvases of varied size (``toy.world_xl``) with random crops, so the
micro-conditioning it learns is real. Stages (each timed in ``xl/build.json``):

1. data: the XL training images (``toy.world_xl``);
2. init: random tiny SDXL components with the world's trained VAE, saved as the fine-tune's starting pipeline;
3. unet: :func:`toy.build._stage_unet` with random crops (the SD teacher's training code, unchanged);
4. calibrate: :func:`toy.calibrate.calibrate` of the XL teacher against the world's real images, CLIP and classifier.

The SD world's build is untouched (its stages, budget and time); the XL folder is built in a temporary sibling and
renamed into place, so an interrupted build is never reused, and is rebuilt when its version (:data:`XL_VERSION`) is
not this code's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.errors import require
from distill_diffusion.toy.build import BUDGETS, BuildBudget, _replace_dir, _stage_unet, ensure_toy_world
from distill_diffusion.toy.paths import BUILD_FILE, TOY_VERSION, XL_VERSION, ToyWorld


def ensure_toy_xl_teacher(
    force: bool = False,
    cache_dir: str | Path | None = None,
    budget: str | BuildBudget = "full",
    progress: bool = True,
) -> ToyWorld:
    """The toy world with its SDXL teacher (``world.teacher_xl``), building the world first if it is missing and the
    XL teacher if it is missing, of another :data:`XL_VERSION`, or ``force``. ``budget`` as in
    :func:`toy.build.ensure_toy_world` (its UNet and calibration fields are the XL teacher's too)."""
    if isinstance(budget, str):
        require(budget in BUDGETS, f"unknown toy budget {budget!r}; use one of: {', '.join(BUDGETS)}")
        budget = replace(BUDGETS[budget])
    world = ensure_toy_world(cache_dir=cache_dir, budget=budget, progress=progress)
    if world.xl_is_complete() and not force:
        return world
    build_toy_xl_teacher(world, budget, progress=progress)
    return world


def build_toy_xl_teacher(world: ToyWorld, budget: BuildBudget, progress: bool = True) -> Path:
    """Build every XL stage into ``<world>/xl.tmp-<pid>`` and atomically rename it to ``world.xl``."""
    for stale in world.root.glob("xl.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier build
    tmp = world.root / f"xl.tmp-{os.getpid()}"
    tmp.mkdir()
    record: dict[str, Any] = {"version": XL_VERSION, "world": TOY_VERSION, "budget": asdict(budget), "seconds": {},
                              "torch_threads": torch.get_num_threads()}
    start = time.perf_counter()
    for name, stage in (("data", _stage_data), ("init", _stage_init), ("unet", _stage_unet_xl)):
        t0 = time.perf_counter()
        record[name] = stage(tmp, budget, progress, world)
        record["seconds"][name] = round(time.perf_counter() - t0, 1)
    for scratch in ("init_teacher", "unet_run"):
        shutil.rmtree(tmp / scratch, ignore_errors=True)
    if budget.calibration_images > 0:
        from distill_diffusion.toy.calibrate import calibrate

        t0 = time.perf_counter()
        record["calibration"] = calibrate(world, budget.calibration_images, guidance_scale=budget.guidance_scale,
                                          progress=progress, teacher=tmp / "teacher")
        record["seconds"]["calibrate"] = round(time.perf_counter() - t0, 1)
    record["seconds"]["total"] = round(time.perf_counter() - start, 1)
    (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2))
    _replace_dir(tmp, world.xl)
    return world.xl


def _stage_data(tmp: Path, b: BuildBudget, progress: bool, world: ToyWorld) -> dict[str, Any]:
    from distill_diffusion.toy.world_xl import VIEWS, make_toy_xl_dataset

    make_toy_xl_dataset(tmp / "data", num_images=b.num_images, seed=b.seed)
    return {"num_images": b.num_images, "views": [[list(size), weight] for size, weight in VIEWS]}


def _stage_init(tmp: Path, b: BuildBudget, progress: bool, world: ToyWorld) -> dict[str, Any]:
    """Random tiny SDXL components with the world's trained VAE (one VAE for both teachers: their latents and their
    FID floor are the same), saved as ``init_teacher/``."""
    from diffusers import AutoencoderKL

    from distill_diffusion.toy.tiny_sdxl import build_tiny_sdxl_components, save_tiny_sdxl_pipeline

    parts = build_tiny_sdxl_components(seed=b.seed)
    vae = AutoencoderKL.from_pretrained(world.teacher / "vae", local_files_only=True)
    vae.register_to_config(force_upcast=True)  # SDXL's VAE config; the toy VAE is fp32 anyway
    parts["vae"] = vae.eval()
    # Caption dropout trains the unconditional branch on the empty prompt's encoding (as diffusers'
    # train_text_to_image_sdxl.py does), so CFG must use that encoding: not SDXL base's zeros, which match its own
    # training. The fine-tune's export keeps the flag, and LCM's unconditional input follows it.
    save_tiny_sdxl_pipeline(tmp / "init_teacher", components=parts, force_zeros_for_empty_prompt=False)
    return {"unet_parameters": sum(p.numel() for p in parts["unet"].parameters())}


def _stage_unet_xl(tmp: Path, b: BuildBudget, progress: bool, world: ToyWorld) -> dict[str, Any]:
    """The SD teacher's UNet stage with random crops, plus what micro-conditioning the run's latent cache recorded."""
    record = _stage_unet(tmp, b, progress, random_crop=True)
    return {**record, "micro_conditioning": recorded_geometry(tmp / "unet_run" / "latent_cache")}


def recorded_geometry(cache_dir: Path) -> dict[str, Any]:
    """Counts of the original sizes and the share of cropped images in a latent cache: evidence in ``build.json`` that
    the teacher trained on real micro-conditioning (the crops are drawn once, when the cache is made, as in diffusers'
    ``train_text_to_image_sdxl.py``, which also precomputes its latents)."""
    from safetensors import safe_open

    sizes, crops = [], []
    for shard in sorted(cache_dir.glob("latents-*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            sizes.append(f.get_tensor("original_size"))
            crops.append(f.get_tensor("crop_top_left"))
    if not sizes:
        return {}
    size, crop = torch.cat(sizes), torch.cat(crops)
    labels = [f"{h}x{w}" for h, w in size.tolist()]
    return {"original_sizes": {k: labels.count(k) for k in sorted(set(labels))},
            "cropped_share": round(float((crop != 0).any(dim=1).float().mean()), 4)}


def xl_summary_lines(world: ToyWorld) -> list[str]:
    """What ``toy build --sdxl`` prints after the SD world's lines: the XL paths, build time and calibration."""
    from distill_diffusion.toy.build import _accuracy_text

    info = json.loads((world.xl / BUILD_FILE).read_text())
    lines = [f"teacher_xl: {world.teacher_xl}", f"data_xl: {world.data_xl}"]
    lines.append(f"XL teacher built in {info['seconds']['total'] / 60:.1f} min ("
                 + ", ".join(f"{k} {v:.0f}s" for k, v in info["seconds"].items() if k != "total") + ")")
    calib = info.get("calibration")
    if calib:
        spacing = calib["settings"]["headline_spacing"]
        for steps, entry in calib["ddim"][spacing].items():
            lines.append(f"XL teacher DDIM {steps:>2} steps ({spacing}): FD {entry['fd']:.3f} "
                         f"(x{calib['ratios_to_max_steps'][steps]:.1f}), CLIP match {entry['clip_match']:.1f}"
                         + _accuracy_text(entry))
        leading = calib["ratios_by_spacing"].get("leading", {})
        if "4" in leading:
            lines.append(f"XL teacher leading DDIM 4 steps: x{leading['4']:.1f} the 50-step FD")
    return lines
