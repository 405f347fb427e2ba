"""Samplers: registry errors, a sampler's call arguments, and schedulers built from the teacher's config."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

from distill_diffusion.errors import UserError
from distill_diffusion.pipelines import SAMPLERS, build_scheduler, get_sampler
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG


def teacher_config():
    return DDIMScheduler(**SD15_SCHEDULER_CONFIG).config


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        get_sampler("lcm-turbo")
    assert "lcm-turbo" in str(err.value)
    for name in SAMPLERS:
        assert name in str(err.value)


def test_lcm_sampler_gives_the_reference_four_step_timesteps():
    """LCMScheduler.from_config(teacher) with original_inference_steps=50 gives the LCM 4-step timesteps [999, 759, 499, 259]."""
    sampler = get_sampler("lcm")
    scheduler = build_scheduler(sampler, teacher_config())
    assert isinstance(scheduler, LCMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(sampler.num_inference_steps)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    assert sampler.call_kwargs() == {"num_inference_steps": 4, "guidance_scale": 1.0}


def test_teacher_samplers_keep_the_schedule_and_spacing():
    ddim = build_scheduler(get_sampler("ddim"), teacher_config())
    assert isinstance(ddim, DDIMScheduler) and ddim.config.timestep_spacing == "leading"
    trailing = build_scheduler(get_sampler("ddim-trailing"), teacher_config())
    trailing.set_timesteps(4)
    assert trailing.timesteps.tolist() == [999, 749, 499, 249]
    dpm = build_scheduler(get_sampler("dpm"), teacher_config())
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert torch.allclose(dpm.alphas_cumprod, ddim.alphas_cumprod)


def test_call_kwargs_overrides_and_bad_steps():
    sampler = get_sampler("ddim")
    assert sampler.call_kwargs() == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert sampler.call_kwargs(steps=8, guidance_scale=3) == {"num_inference_steps": 8, "guidance_scale": 3.0}
    with pytest.raises(UserError, match="step count"):
        sampler.call_kwargs(steps=0)


def test_lcm_full_uses_the_lcm_pipeline_and_needs_a_guidance_embedding():
    sampler = get_sampler("lcm-full")
    assert sampler.pipeline == "LatentConsistencyModelPipeline" and sampler.needs_guidance_embedding
    assert sampler.scheduler == "LCMScheduler" and sampler.guidance_scale > 1
