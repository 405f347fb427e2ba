"""The model card of a DMD2 generator: its steps and sampler, how it was trained, and how stock diffusers loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.core.timesteps import trained_step_counts
from distill_diffusion.models.export import CardSampling, pipeline_class_name, write_model_card
from distill_diffusion.trainers.methods.adversarial.card import inference_line, inputs_line


def write_card(method: Any, folder: Path) -> None:
    cfg, T = method.config, method.schedule.num_train_timesteps
    sched = f"LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps={T})"
    name = pipeline_class_name(method.components)
    steps = min(trained_step_counts(method.scheduler()) or [1])
    if cfg.lora:
        usage = f"""
from diffusers import LCMScheduler, {name}

pipe = {name}.from_pretrained("{method.components.source}")
pipe.scheduler = {sched}
pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors: the generator's adapter
image = pipe("a prompt", num_inference_steps={steps}, guidance_scale=1.0).images[0]
"""
    else:
        usage = f"""
from diffusers import {name}

pipe = {name}.from_pretrained("path/to/this/folder")  # its LCMScheduler samples the generator's grid
image = pipe("a prompt", num_inference_steps={steps}, guidance_scale=1.0).images[0]
"""
    gan = (f"GAN weight {cfg.gan_weight} (classifier {cfg.classifier_weight}) on the fake score's {', '.join(method.taps)}" if cfg.gan
           else "no GAN term")
    extra = f"""
- Inference: {inference_line(method.scheduler(), sched)}
- Training: {'one-base LoRA mode, rank ' + str(cfg.lora_rank) + ' (generator and fake score as two adapters on the teacher)'
             if cfg.lora else 'full generator and fake-score UNets'}; student timesteps {cfg.student_timesteps} drawn with
  probabilities {cfg.student_timestep_probs} (the first from pure noise); {inputs_line(cfg)}; real score guided at
  {cfg.real_guidance_scale}; {cfg.fake_updates} fake-score updates per generator update; {gan}.
"""
    write_model_card(folder, base_model=method.components.source, method=method.card_name + ("-lora" if cfg.lora else ""),
                     paper=method.paper, usage=usage, sampling=CardSampling("ladd", steps, 1.0), extra=extra)
