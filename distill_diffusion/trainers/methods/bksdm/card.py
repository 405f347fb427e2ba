"""The model card of a BK-SDM export: which blocks were removed, how many parameters remain, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.models.export import TEACHER_SAMPLING, pipeline_class_name, write_model_card
from distill_diffusion.trainers.methods.bksdm.features import describe


def write_card(method: Any, folder: Path) -> None:
    """README.md for the student pipeline folder (stock ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``;
    the UNet is a plain config)."""
    cfg = method.config
    teacher, student = method.parameter_counts()
    arch = f"student config {cfg.student_config}" if cfg.student_config else f"variant {cfg.variant}"
    pipeline = pipeline_class_name(method.components)
    usage = f"""
from diffusers import {pipeline}

pipe = {pipeline}.from_pretrained("path/to/this/folder")
image = pipe("a prompt", num_inference_steps=25, guidance_scale=7.5).images[0]
"""
    lcm_config = "lcm_lora_sdxl" if pipeline.endswith("XLPipeline") else "lcm_lora_sd15"
    pairs = describe(method.pairs)
    extra = f"""
- Architecture: {arch}; UNet {student / 1e6:.2f}M parameters against the teacher's {teacher / 1e6:.2f}M
  ({100 * (1 - student / teacher):.0f}% fewer). Initialised from the teacher by name: {method.init_report.summary()}.
- Loss: task + {cfg.lambda_out}·output KD + {cfg.lambda_feat}·feature KD ({cfg.feature_loss}) over: {pairs}.
- Faster still: train an LCM-LoRA on this folder (`distill-diffusion train lcm --config {lcm_config}
  --pretrained_model_name_or_path path/to/this/folder`) and sample it in 2-4 steps.
"""
    write_model_card(folder, base_model=method.components.source, method="bksdm", paper=method.paper, usage=usage,
                     sampling=TEACHER_SAMPLING, extra=extra)  # a smaller UNet, sampled as its teacher
