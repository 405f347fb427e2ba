"""Known-answer tests for core.schedule against diffusers' own schedulers."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from distill_diffusion.core import NoiseSchedule, append_dims

SD15 = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon",
)


def test_alphas_cumprod_equal_diffusers_from_frozendict():
    frozen = DDIMScheduler(**SD15).config  # a FrozenDict with DDIM-only keys
    sched = NoiseSchedule.from_scheduler_config(frozen)
    ref = DDPMScheduler(**{k: v for k, v in SD15.items() if k != "set_alpha_to_one"}).alphas_cumprod
    assert sched.alphas_cumprod.dtype == torch.float64
    assert sched.num_train_timesteps == 1000
    torch.testing.assert_close(sched.alphas_cumprod, ref.double(), rtol=0, atol=0)
    # SD 1.5's last step is not pure noise: SNR ~ 0.0047 at t=999 (Lin et al., arXiv:2305.08891).
    assert sched.snr(torch.tensor(999)).item() == pytest.approx(0.0047, abs=2e-4)


def test_linear_schedule_is_not_hard_coded():
    sched = NoiseSchedule.from_scheduler_config({**SD15, "beta_schedule": "linear"})
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012).alphas_cumprod
    torch.testing.assert_close(sched.alphas_cumprod, ref.double(), rtol=0, atol=0)


def test_add_noise_equals_ddpm_add_noise():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    t = torch.tensor([0, 1, 250, 777, 999])
    ref = DDPMScheduler.from_config(SD15).add_noise(x0, eps, t)
    torch.testing.assert_close(sched.add_noise(x0, eps, t), ref, rtol=1e-6, atol=1e-6)


def test_alpha_sigma_values_and_dtype():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    t = torch.tensor([0, 500, 999])
    a, s = sched.alpha(t), sched.sigma(t)
    assert a.dtype == s.dtype == torch.float32 and a.shape == (3,)
    torch.testing.assert_close(a**2 + s**2, torch.ones(3))
    torch.testing.assert_close(a.double(), sched.alphas_cumprod[t].sqrt(), rtol=1e-7, atol=0)
    torch.testing.assert_close(sched.snr(t), (a**2 / s**2))


def test_negative_t_is_clean():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    t = torch.tensor([-1, -20, 5])
    assert sched.alpha(t)[:2].tolist() == [1.0, 1.0]
    assert sched.sigma(t)[:2].tolist() == [0.0, 0.0]
    assert sched.snr(t)[0].item() == float("inf")
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    z = sched.add_noise(x0, eps, t)
    assert torch.equal(z[:2], x0[:2]) and not torch.equal(z[2], x0[2])


def test_zero_terminal_snr_config():
    sched = NoiseSchedule.from_scheduler_config({**SD15, "rescale_betas_zero_snr": True})
    t = torch.tensor([999])
    assert sched.sigma(t).item() == 1.0 and sched.alpha(t).item() == 0.0
    assert sched.snr(t).item() == 0.0
    assert sched.alpha(torch.tensor([998])).item() > 0


def test_integer_timesteps_required_and_scalar_ok():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    with pytest.raises(TypeError):
        sched.alpha(torch.tensor([1.5]))
    assert sched.alpha(10).shape == ()


def test_append_dims():
    x = torch.arange(3.0)
    assert append_dims(x, 4).shape == (3, 1, 1, 1)
    assert append_dims(x, 1).shape == (3,)
    with pytest.raises(ValueError):
        append_dims(torch.zeros(2, 2), 1)
