"""Inference presets: registry errors, preset call arguments, and schedulers built from the teacher's config."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

from distill_diffusion.errors import UserError
from distill_diffusion.pipelines import PRESETS, build_scheduler, get_preset
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG


def teacher_config():
    return DDIMScheduler(**SD15_SCHEDULER_CONFIG).config


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        get_preset("lcm-turbo")
    assert "lcm-turbo" in str(err.value)
    for name in PRESETS:
        assert name in str(err.value)


def test_lcm_preset_gives_the_reference_four_step_timesteps():
    """LCMScheduler.from_config(teacher) with original_inference_steps=50 gives the LCM 4-step timesteps [999, 759, 499, 259]."""
    preset = get_preset("lcm")
    scheduler = build_scheduler(preset, teacher_config())
    assert isinstance(scheduler, LCMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(preset.num_inference_steps)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    assert preset.call_kwargs() == {"num_inference_steps": 4, "guidance_scale": 1.0}


def test_teacher_presets_keep_the_schedule_and_spacing():
    ddim = build_scheduler(get_preset("ddim"), teacher_config())
    assert isinstance(ddim, DDIMScheduler) and ddim.config.timestep_spacing == "leading"
    trailing = build_scheduler(get_preset("ddim-trailing"), teacher_config())
    trailing.set_timesteps(4)
    assert trailing.timesteps.tolist() == [999, 749, 499, 249]
    dpm = build_scheduler(get_preset("dpm"), teacher_config())
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert torch.allclose(dpm.alphas_cumprod, ddim.alphas_cumprod)


def test_call_kwargs_overrides_and_bad_steps():
    preset = get_preset("ddim")
    assert preset.call_kwargs() == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert preset.call_kwargs(steps=8, guidance_scale=3) == {"num_inference_steps": 8, "guidance_scale": 3.0}
    with pytest.raises(UserError, match="step count"):
        preset.call_kwargs(steps=0)


def test_lcm_full_uses_the_lcm_pipeline_and_needs_a_guidance_embedding():
    preset = get_preset("lcm-full")
    assert preset.pipeline == "LatentConsistencyModelPipeline" and preset.needs_guidance_embedding
    assert preset.scheduler == "LCMScheduler" and preset.guidance_scale > 1
