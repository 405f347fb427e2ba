"""The model card of a progressive-distillation export: how many steps, which guidance, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.models.export import CardSampling, pipeline_class_name, write_model_card


def write_card(method: Any, folder: Path) -> None:
    """README.md for a student folder: the family's stock pipeline (``StableDiffusionPipeline``,
    ``StableDiffusionXLPipeline``) + its own DDIMScheduler at its step count."""
    cfg, steps, g = method.config, method.sampling_steps(), method.guidance_scale()
    name = pipeline_class_name(method.components)
    usage = f"""
from diffusers import {name}

pipe = {name}.from_pretrained("path/to/this/folder")  # its DDIMScheduler: trailing, {cfg.prediction_type}
image = pipe("a prompt", num_inference_steps={steps}, guidance_scale={g}).images[0]
"""
    if method.w_conditioned:
        guidance = (f"guidance_scale {g}: the student takes the guidance scale as an input (time_cond_proj_dim "
                    f"{cfg.time_cond_proj_dim}, trained for guidance_scale in [{cfg.guidance_scale_min}, {cfg.guidance_scale_max}]), "
                    "one UNet call per step, no CFG pass")
    elif cfg.guidance == "fixed":
        guidance = (f"guidance_scale 1: the teacher's guidance_scale {cfg.guidance_scale_min} is built into the student "
                    "(a CFG pass on top would apply it twice)")
    else:
        guidance = "guidance_scale 1: distilled from the unguided teacher"
    extra = f"""
- Inference: DDIMScheduler (trailing spacing, prediction_type {cfg.prediction_type}, last step to alpha = 1) at exactly
  {steps} steps, the grid it was distilled on; {guidance}.
- Distillation: rounds {cfg.start_steps} → {cfg.target_steps} steps, {method.plan.student_steps}, steps per round
  {cfg.steps_per_round}, {cfg.loss_weighting} weighting on the x error; guidance {cfg.guidance}.
"""
    write_model_card(folder, base_model=method.components.source, method="progressive", paper=method.paper, usage=usage,
                     sampling=CardSampling("progressive", steps, g), extra=extra)
