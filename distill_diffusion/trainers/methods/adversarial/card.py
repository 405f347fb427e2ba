"""The model card of an adversarially distilled student (LADD, ADD): its steps and sampler, and how to load it with stock
diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.models.export import write_model_card


def write_card(method: Any, folder: Path) -> None:
    cfg, T = method.config, method.schedule.num_train_timesteps
    sched = f"LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps={T})"
    if cfg.lora:
        usage = f"""
from diffusers import LCMScheduler, StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{method.components.source}")
pipe.scheduler = {sched}
pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors
image = pipe("a prompt", num_inference_steps=1, guidance_scale=1.0).images[0]
"""
    else:
        usage = """
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("path/to/this/folder")  # its LCMScheduler samples the student's grid
image = pipe("a prompt", num_inference_steps=1, guidance_scale=1.0).images[0]
"""
    extra = f"""
- Inference: 1-4 steps, guidance_scale 1 (no CFG pass); `{sched}` visits the trailing timesteps the student was
  trained at ({', '.join(map(str, cfg.student_timesteps))} for {len(cfg.student_timesteps)} steps; {cfg.student_timesteps[0]} for 1).
- Training: {'LoRA rank ' + str(cfg.lora_rank) if cfg.lora else 'full UNet'}, student timesteps {cfg.student_timesteps} drawn with
  probabilities {cfg.student_timestep_probs}{' (the first from pure noise)' if cfg.first_step_pure_noise else ''}; {method.describe_discriminator()}; {cfg.adv_loss} loss, R1 γ {cfg.r1_gamma},
  distillation weight {cfg.distill_weight}.
"""
    write_model_card(folder, base_model=method.components.source, method=method.card_name + ("-lora" if cfg.lora else ""), paper=method.paper,
                     usage=usage, extra=extra)
