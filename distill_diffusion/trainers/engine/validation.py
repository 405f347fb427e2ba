"""Validation images during training: the method's pipeline on fixed prompts and seeds, saved and logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from distill_diffusion.config import TrainConfig
from distill_diffusion.trainers.methods.base import DistillationMethod


def run_validation(method: DistillationMethod, cfg: TrainConfig, accelerator: Accelerator, step: int) -> list[Path]:
    """Generate ``num_validation_images`` per prompt into ``output_dir/validation/step-N`` (one PNG per image and
    ``grid.png``: a row per prompt), and log them. Images, not the loss, show progress where the loss does not (an
    adversarial generator's)."""
    pipeline = method.validation_pipeline()
    if pipeline is None:
        return []
    pipeline.set_progress_bar_config(disable=True)
    folder = Path(cfg.output_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    paths, arrays = [], []
    call_kwargs = {"num_inference_steps": cfg.validation_inference_steps, **method.validation_call_kwargs()}
    for p_idx, prompt in enumerate(cfg.validation_prompts):
        for i in range(cfg.num_validation_images):
            generator = torch.Generator(device="cpu").manual_seed((cfg.seed or 0) + 1000 * p_idx + i)
            with torch.no_grad():
                image = pipeline(prompt, generator=generator, **call_kwargs).images[0]
            path = folder / f"{p_idx:03d}-{i}.png"
            image.save(path)
            paths.append(path)
            arrays.append(np.asarray(image))
    save_grid(arrays, len(cfg.validation_prompts), folder / "grid.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(arrays), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(a, caption=str(p)) for a, p in zip(arrays, paths)]}, step=step)
    return paths


def save_grid(arrays: list[np.ndarray], rows: int, path: Path) -> Path:
    """Equal-sized HWC images, row-major, tiled into one PNG of ``rows`` rows."""
    from PIL import Image

    cols = len(arrays) // rows
    h, w = arrays[0].shape[:2]
    tiles = np.stack(arrays).reshape(rows, cols, h, w, -1).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, -1)
    Image.fromarray(tiles.squeeze(-1) if tiles.shape[-1] == 1 else tiles).save(path)
    return path
