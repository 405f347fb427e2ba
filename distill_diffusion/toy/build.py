"""Build the trained toy world once and cache it: toy data, VAE, UNet teacher (through the engine), tiny CLIP.

``distill-diffusion toy build`` / :func:`ensure_toy_world`. Stages, in order (each timed in build.json):

1. data: the procedural captioned dataset (``toy.world``) as an imagefolder;
2. vae: fit the tiny ``AutoencoderKL`` (``toy.vae.train_toy_vae``; LDM objective, Rombach et al. 2022);
3. unet: train the tiny UNet with the engine's plain fine-tune method (DDPM L_simple, Ho et al. 2020) on
   cached latents, with caption dropout so classifier-free guidance (Ho & Salimans 2022) works;
4. clip: train the tiny CLIP contrastively (Radford et al. 2021) on real toy images (``toy.clip``);
5. classifier: train the shape/colour/background classifier on real toy images and their true attributes
   (``toy.classifier``), the prompt-faithfulness measure;
6. calibrate: teacher Fréchet distance, CLIP score and prompt accuracy at 1/2/4/50 DDIM steps (``toy.calibrate``).

Everything is built in a temporary sibling folder and renamed into place at the end, so an interrupted
build is never mistaken for a finished one (a leftover temporary folder is deleted by the next build).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.errors import require
from distill_diffusion.toy.paths import BUILD_FILE, TOY_GUIDANCE, TOY_VERSION, ToyWorld

#: Pipeline entries the fine-tune export writes that make up the teacher folder (the ``_2`` ones: SDXL's, ``toy.build_xl``).
_PIPELINE_ENTRIES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                     "scheduler", "README.md")


@dataclass(frozen=True)
class BuildBudget:
    """Sizes and step counts of one build (``full`` is the cached world; tests use tiny ones)."""

    num_images: int = 8192
    vae_steps: int = 1000
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-3  # 3e-3 fitted colours badly in some runs (toy.vae)
    unet_steps: int = 5200  # toy-v2 had 2600: under-trained (docs/toy_world.md)
    unet_batch_size: int = 32
    unet_learning_rate: float = 1e-3
    unet_warmup_steps: int = 50
    ema_decay: float = 0.999
    #: Min-SNR-γ loss weighting of the teacher UNet (Hang et al. 2023); None: plain L_simple.
    unet_snr_gamma: float | None = 5.0
    proportion_empty_prompts: float = 0.1
    clip_steps: int = 200
    clip_batch_size: int = 64
    clip_projection_dim: int = 32
    classifier_images: int = 16384  # rendered in seconds; more images, not more steps, is what lifts shape accuracy
    classifier_steps: int = 1200
    classifier_batch_size: int = 64
    #: Teacher samples per step count in the calibration (0 skips it); must exceed clip_projection_dim.
    calibration_images: int = 512  # at 256 the FD's small-sample bias squeezes the 4-step ratio (2.6x against 3.6x at 1024)
    guidance_scale: float = TOY_GUIDANCE
    seed: int = 0


BUDGETS: dict[str, BuildBudget] = {
    "full": BuildBudget(),
    # a minute-scale world for trying the commands; its teacher draws blobs, not shapes
    "small": BuildBudget(num_images=1024, vae_steps=150, unet_steps=200, clip_steps=60, classifier_steps=300,
                       calibration_images=64),
}


def ensure_toy_world(
    force: bool = False,
    cache_dir: str | Path | None = None,
    budget: str | BuildBudget = "full",
    progress: bool = True,
) -> ToyWorld:
    """The cached trained toy world; when it is missing, the package's shipped weights are installed (seconds,
    :mod:`toy.shipped`) or, for another budget or with ``force``, the world is built from scratch. Returns its paths.

    ``budget`` is a name in :data:`BUDGETS` or a :class:`BuildBudget`. A cached world is reused whatever
    budget built it (``build.json`` says which); pass ``force=True`` to rebuild.
    """
    from distill_diffusion.toy.shipped import install_shipped_world, shipped_version

    if isinstance(budget, str):
        require(budget in BUDGETS, f"unknown toy budget {budget!r}; use one of: {', '.join(BUDGETS)}")
        budget = replace(BUDGETS[budget])
    world = ToyWorld.in_cache(cache_dir)
    if world.is_complete() and not force:
        return world
    if not force and budget == BUDGETS["full"] and shipped_version() == TOY_VERSION:
        return install_shipped_world(world.root)
    return build_toy_world(world.root, budget, progress=progress)


def build_toy_world(root: str | Path, budget: BuildBudget, progress: bool = True) -> ToyWorld:
    """Build every stage into ``<root>.tmp-<pid>`` and atomically rename it to ``root``."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f"{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier build
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    record: dict[str, Any] = {"version": TOY_VERSION, "budget": asdict(budget), "seconds": {}, "torch_threads": torch.get_num_threads()}
    start = time.perf_counter()
    for name, stage in (("data", _stage_data), ("vae", _stage_vae), ("unet", _stage_unet), ("clip", _stage_clip),
                        ("classifier", _stage_classifier)):
        t0 = time.perf_counter()
        record[name] = stage(tmp, budget, progress)
        record["seconds"][name] = round(time.perf_counter() - t0, 1)
    for scratch in ("init_teacher", "unet_run"):
        shutil.rmtree(tmp / scratch, ignore_errors=True)
    if budget.calibration_images > 0:
        from distill_diffusion.toy.calibrate import calibrate

        t0 = time.perf_counter()
        record["calibration"] = calibrate(ToyWorld(tmp), budget.calibration_images, guidance_scale=budget.guidance_scale, progress=progress)
        record["seconds"]["calibrate"] = round(time.perf_counter() - t0, 1)
    record["seconds"]["total"] = round(time.perf_counter() - start, 1)
    (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2))
    _replace_dir(tmp, root)
    return ToyWorld(root)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``; an old ``dest`` is renamed away first and deleted after."""
    old = dest.parent / f"{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)


def _stage_data(tmp: Path, b: BuildBudget, progress: bool) -> dict[str, Any]:
    from distill_diffusion.toy.world import make_toy_dataset

    make_toy_dataset(tmp / "data", num_images=b.num_images, seed=b.seed)
    return {"num_images": b.num_images}


def _stage_vae(tmp: Path, b: BuildBudget, progress: bool) -> dict[str, Any]:
    """Fit the VAE and save a teacher folder with a random UNet: the fine-tune's starting point."""
    from distill_diffusion.toy.tiny import build_tiny_components, save_tiny_pipeline
    from distill_diffusion.toy.vae import train_toy_vae

    parts = build_tiny_components(seed=b.seed)
    metrics = train_toy_vae(
        parts["vae"], steps=b.vae_steps, batch_size=b.vae_batch_size, learning_rate=b.vae_learning_rate,
        num_images=min(b.num_images, 4096), seed=b.seed, progress=progress, cosine=True,
    )
    save_tiny_pipeline(tmp / "init_teacher", components=parts)
    return {"steps": b.vae_steps, **metrics}


def unet_run_config(tmp: Path, b: BuildBudget, progress: bool, random_crop: bool = False) -> Any:
    """The engine run that trains the teacher UNet: plain fine-tune on cached latents, EMA, caption dropout.

    ``tmp`` holds ``init_teacher/`` and ``data/``. ``random_crop``: random 32x32 crops with each image's original
    size and crop offset recorded for SDXL's micro-conditioning (the XL teacher, ``toy.build_xl``); the SD teacher's
    square images need no crop.
    """
    from distill_diffusion.config import build_run_config
    from distill_diffusion.trainers.methods.finetune import FineTuneConfig

    config = {
        "model": {"pretrained_model_name_or_path": str(tmp / "init_teacher"), "local_files_only": True},
        "data": {
            "source": "imagefolder",
            "train_data_dir": str(tmp / "data"),
            "resolution": 32,
            **({"center_crop": False, "micro_conditioning": "data"} if random_crop else {}),
            "proportion_empty_prompts": b.proportion_empty_prompts,
            "cache_latents": True,
            "cache_dir": str(tmp / "unet_run" / "latent_cache"),
        },
        "train": {
            "output_dir": str(tmp / "unet_run"),
            "seed": b.seed,
            "train_batch_size": b.unet_batch_size,
            "max_train_steps": b.unet_steps,
            "learning_rate": b.unet_learning_rate,
            "lr_scheduler": "cosine",
            "lr_warmup_steps": min(b.unet_warmup_steps, b.unet_steps - 1),
            "adam_weight_decay": 0.0,
            "use_ema": True,
            "ema_decay": b.ema_decay,
            "checkpointing_steps": b.unet_steps + 1,  # no checkpoints: the build is redone, not resumed
            "validation_steps": 0,
            "progress_bar": progress,
        },
        "method": {"snr_gamma": b.unet_snr_gamma},
    }
    return build_run_config("finetune", FineTuneConfig, config)


def _stage_unet(tmp: Path, b: BuildBudget, progress: bool, random_crop: bool = False) -> dict[str, Any]:
    """Train through the engine (``trainers.engine.build.train``) and keep only the exported pipeline as ``teacher/``."""
    from distill_diffusion.trainers.engine.build import train

    losses: list[float] = []

    def record_loss(step: int, logs: dict[str, float]) -> None:
        # the engine logs to trackers only; keep the loss curve for build.json without one
        losses.append(float(logs["unet/loss"]))

    out = train(unet_run_config(tmp, b, progress, random_crop), callbacks=[record_loss])
    (tmp / "teacher").mkdir()
    for entry in _PIPELINE_ENTRIES:
        if (out / entry).exists():
            os.replace(out / entry, tmp / "teacher" / entry)
    return {"steps": b.unet_steps, "batch_size": b.unet_batch_size, "learning_rate": b.unet_learning_rate, **_loss_summary(losses)}


def _loss_summary(losses: list[float]) -> dict[str, Any]:
    """First/last-window means of the training loss (the whole curve is too long for build.json)."""
    if not losses:
        return {}
    w = max(1, min(50, len(losses) // 5))
    return {"loss_first": sum(losses[:w]) / w, "loss_last": sum(losses[-w:]) / w, "loss_window": w}


def _stage_clip(tmp: Path, b: BuildBudget, progress: bool) -> dict[str, Any]:
    from distill_diffusion.toy.clip import build_toy_clip, save_toy_clip, train_toy_clip
    from distill_diffusion.toy.tokenizer import build_tokenizer
    from distill_diffusion.toy.vae import toy_pixels
    from distill_diffusion.toy.world import iter_examples

    n = min(b.num_images, 4096)
    tokenizer = build_tokenizer()
    model = build_toy_clip(tokenizer, projection_dim=b.clip_projection_dim, seed=b.seed)
    captions = [ex.caption for ex in iter_examples(n, b.seed)]
    losses = train_toy_clip(model, tokenizer, toy_pixels(n, seed=b.seed), captions, b.clip_steps, b.clip_batch_size, seed=b.seed, progress=progress)
    save_toy_clip(model, tokenizer, tmp / "clip")
    return {"steps": b.clip_steps, "batch_size": b.clip_batch_size, "projection_dim": b.clip_projection_dim, **_loss_summary(losses)}


def _stage_classifier(tmp: Path, b: BuildBudget, progress: bool) -> dict[str, Any]:
    from distill_diffusion.toy.classifier import fit_toy_classifier

    return fit_toy_classifier(tmp / "classifier", b.classifier_images, b.classifier_steps, b.classifier_batch_size, seed=b.seed)


def summary_lines(world: ToyWorld) -> list[str]:
    """What ``toy build`` prints: the paths, the build time and the calibration headline."""
    info = world.info()
    lines = [f"{name}: {getattr(world, name)}" for name in ("root", "data", "teacher", "clip", "classifier")]
    if "installed" in info:
        lines.append(f"installed in {info['installed']['seconds']:.0f} s from {info['installed']['from']} "
                     "(distill-diffusion toy build --force re-creates them)")
    lines.append(f"built in {info['seconds']['total'] / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in info['seconds'].items() if k != 'total')})")
    calib = info.get("calibration")
    if "classifier" in info:
        acc = info["classifier"]["heldout_accuracy"]
        lines.append("classifier on held-out real images: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    if calib and "acc_shape" in calib["real"]:
        lines.append(f"real images: CLIP match {calib['real']['clip_match']:.1f}{_accuracy_text(calib['real'])}")
    if calib and "vae_reconstruction" in calib:
        floor = calib["vae_reconstruction"]
        lines.append(f"VAE reconstructions of real images (the floor): FD {floor['fd']:.3f}, CLIP match {floor['clip_match']:.1f}")
    if calib:
        spacing = calib["settings"]["headline_spacing"]
        for steps, entry in calib["ddim"][spacing].items():
            lines.append(
                f"teacher DDIM {steps:>2} steps ({spacing}): FD {entry['fd']:.3f} "
                f"(x{calib['ratios_to_max_steps'][steps]:.1f}), CLIP match {entry['clip_match']:.1f} vs mismatch {entry['clip_mismatch']:.1f}"
                + _accuracy_text(entry)
            )
    return lines


def _accuracy_text(entry: dict[str, Any]) -> str:
    """``, shape/colour/background 91/99/100%`` from a calibration entry (empty for a world without a classifier)."""
    from distill_diffusion.toy.classifier import HEADS

    values = [entry.get(f"acc_{head}") for head in HEADS]
    if all(v is None for v in values):
        return ""
    return ", shape/colour/background " + "/".join("–" if v is None else f"{100 * v:.0f}" for v in values) + "%"
