"""The model card of an adversarially distilled student (LADD, ADD): its steps and sampler, and how to load it with stock
diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.core.timesteps import (
    TRAINED_TIMESTEPS,
    join_or,
    trained_step_counts,
    visited_timesteps,
)
from distill_diffusion.models.export import CardSampling, pipeline_class_name, write_model_card


def inference_line(sampler: Any, sched: str) -> str:
    """The step counts whose timesteps were all trained, what each visits, and that the others are refused."""
    counts = trained_step_counts(sampler) or []
    visits = "; ".join(f"{n} step{'s' if n > 1 else ''}: {', '.join(map(str, visited_timesteps(sampler, n) or []))}" for n in counts)
    other = next((n for n in range(1, len(counts) + 2) if n not in counts), None)
    seen = visited_timesteps(sampler, other) if other else None
    example = f" ({other} steps visit {', '.join(map(str, seen))})" if seen else ""
    return (f"{join_or(counts)} steps, guidance_scale 1 (no CFG pass); `{sched}` then visits only timesteps the student was\n"
            f"  trained at ({visits}). Other step counts visit timesteps it never saw{example}: `distill-diffusion generate` and\n"
            f"  `bench quality` refuse them, reading the trained timesteps from the scheduler config (`{TRAINED_TIMESTEPS}`).")


def inputs_line(cfg: Any) -> str:
    """What the later student timesteps were trained on."""
    if cfg.backward_simulation:
        return ("backward simulation (Yin et al., DMD2, arXiv:2405.14867, §4.5): each later timestep trained on the sampler's own "
                "input there, the student's re-noised earlier samples")
    return "later timesteps trained on noised real latents"


def write_card(method: Any, folder: Path) -> None:
    cfg, T = method.config, method.schedule.num_train_timesteps
    sched = f"LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps={T})"
    name = pipeline_class_name(method.components)  # the teacher family's stock pipeline
    if cfg.lora:
        usage = f"""
from diffusers import LCMScheduler, {name}

pipe = {name}.from_pretrained("{method.components.source}")
pipe.scheduler = {sched}
pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors
image = pipe("a prompt", num_inference_steps=1, guidance_scale=1.0).images[0]
"""
    else:
        usage = f"""
from diffusers import {name}

pipe = {name}.from_pretrained("path/to/this/folder")  # its LCMScheduler samples the student's grid
image = pipe("a prompt", num_inference_steps=1, guidance_scale=1.0).images[0]
"""
    extra = f"""
- Inference: {inference_line(method.scheduler(), sched)}
- Training: {'LoRA rank ' + str(cfg.lora_rank) if cfg.lora else 'full UNet'}, student timesteps {cfg.student_timesteps} drawn with
  probabilities {cfg.student_timestep_probs}{' (the first from pure noise)' if cfg.first_step_pure_noise else ''}; {inputs_line(cfg)};
  {method.describe_discriminator()}; {cfg.adv_loss} loss, R1 γ {cfg.r1_gamma}, distillation weight {cfg.distill_weight}.
"""
    sampling = CardSampling("ladd", min(trained_step_counts(method.scheduler()) or [1]), 1.0)  # its fewest trained steps, no CFG
    write_model_card(folder, base_model=method.components.source, method=method.card_name + ("-lora" if cfg.lora else ""), paper=method.paper,
                     usage=usage, sampling=sampling, extra=extra)
