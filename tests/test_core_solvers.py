"""Known-answer tests for core.solvers: DDIM step vs diffusers, progressive-distillation target (Alg. 2)."""

import pytest
import torch
from diffusers import DDIMScheduler

from distill_diffusion.core import NoiseSchedule, append_dims, ddim_step, progressive_target_x0, to_x0_eps

SD15 = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, set_alpha_to_one=False,
)
# (num_inference_steps, t): diffusers steps to t - 1000 // num_inference_steps.
PAIRS = [(50, 999), (50, 520), (10, 500), (4, 259), (2, 999), (50, 19)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("num_steps,t", PAIRS)
def test_ddim_step_equals_diffusers(prediction_type, num_steps, t):
    ref_sched = DDIMScheduler(**SD15, prediction_type=prediction_type)
    ref_sched.set_timesteps(num_steps)
    sched = NoiseSchedule.from_scheduler_config(ref_sched.config)
    g = torch.Generator().manual_seed(t)
    z, out = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    ref = ref_sched.step(out, t, z, eta=0.0).prev_sample

    s = t - 1000 // num_steps
    # set_alpha_to_one=False: diffusers' last step (s < 0) lands on abar_0, not on clean data.
    s_t = torch.tensor(max(s, 0))
    tt = torch.tensor(t)
    x0, eps = to_x0_eps(out, z, sched.alpha(tt), sched.sigma(tt), prediction_type)
    ours = ddim_step(x0, eps, sched.alpha(s_t), sched.sigma(s_t))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _teacher_two_steps():
    """A fake teacher (fixed linear map in x0) sampled twice with DDIM in float64."""
    sched = NoiseSchedule.from_scheduler_config(SD15)

    def coef(t):
        tt = torch.tensor([t])
        return append_dims(sched.alpha(tt).double(), 4), append_dims(sched.sigma(tt).double(), 4)

    def teacher_x0(z, t):
        return torch.tanh(z) * (1.0 + t / 1000.0)

    def step(z, t, s):
        a_t, s_t = coef(t)
        x0 = teacher_x0(z, t)
        eps = (z - a_t * x0) / s_t
        a_s, s_s = coef(s)
        return ddim_step(x0, eps, a_s, s_s), x0

    return coef, step


@pytest.mark.parametrize("t,tp,tpp", [(999, 749, 499), (500, 400, 300), (60, 40, 20)])
def test_progressive_target_one_step_equals_two_teacher_steps(t, tp, tpp):
    coef, step = _teacher_two_steps()
    z_t = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z_tp, _ = step(z_t, t, tp)
    z_tpp, _ = step(z_tp, tp, tpp)
    (a_t, s_t), (a_pp, s_pp) = coef(t), coef(tpp)
    x_tilde = progressive_target_x0(z_t, z_tpp, a_t, s_t, a_pp, s_pp)
    # A perfect student predicting x_tilde at z_t, one DDIM step t -> t''.
    eps_student = (z_t - a_t * x_tilde) / s_t
    torch.testing.assert_close(ddim_step(x_tilde, eps_student, a_pp, s_pp), z_tpp, rtol=1e-10, atol=1e-10)
    # And it is not simply the teacher's one-step x0 (the test can tell them apart).
    assert not torch.allclose(x_tilde, torch.tanh(z_t) * (1.0 + t / 1000.0), atol=1e-3)


def test_progressive_target_at_clean_end_is_teacher_x0():
    coef, step = _teacher_two_steps()
    z_t = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z_tp, _ = step(z_t, 40, 19)
    z_tpp, teacher_x0 = step(z_tp, 19, -1)  # t'' < 0: alpha=1, sigma=0
    a_t, s_t = coef(40)
    one, zero = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    x_tilde = progressive_target_x0(z_t, z_tpp, a_t, s_t, one, zero)
    torch.testing.assert_close(x_tilde, teacher_x0, rtol=0, atol=0)
