"""Known-answer tests for core.parameterization: x0/eps/v conversions and LCM consistency scalings."""

import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler

from distill_diffusion.core import (
    PREDICTION_TYPES,
    NoiseSchedule,
    append_dims,
    consistency_scalings,
    from_x0_eps,
    to_x0_eps,
)
from distill_diffusion.errors import UserError

SD15 = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, prediction_type="epsilon",
)


def _setup():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(
        4, 4, 3, 3, generator=g, dtype=torch.float64
    )
    t = torch.tensor([1, 300, 700, 999])
    alpha = append_dims(sched.alpha(t), 4).double()
    sigma = append_dims(sched.sigma(t), 4).double()
    # Renormalise so alpha^2 + sigma^2 = 1 holds in float64 (the v identities rely on it).
    norm = (alpha**2 + sigma**2).sqrt()
    return x0, eps, t, alpha / norm, sigma / norm


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_round_trip(prediction_type):
    x0, eps, _, alpha, sigma = _setup()
    z = alpha * x0 + sigma * eps
    out = from_x0_eps(x0, eps, alpha, sigma, prediction_type)
    x0_hat, eps_hat = to_x0_eps(out, z, alpha, sigma, prediction_type)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_targets_are_the_right_quantities():
    x0, eps, _, alpha, sigma = _setup()
    assert torch.equal(from_x0_eps(x0, eps, alpha, sigma, "epsilon"), eps)
    assert torch.equal(from_x0_eps(x0, eps, alpha, sigma, "sample"), x0)
    assert not torch.allclose(from_x0_eps(x0, eps, alpha, sigma, "v_prediction"), eps)


def test_v_matches_diffusers_get_velocity():
    sched = NoiseSchedule.from_scheduler_config(SD15)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 4, 3, 3, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    t = torch.tensor([0, 200, 600, 999])
    alpha, sigma = append_dims(sched.alpha(t), 4), append_dims(sched.sigma(t), 4)
    ref = DDPMScheduler.from_config(SD15).get_velocity(x0, eps, t)
    torch.testing.assert_close(from_x0_eps(x0, eps, alpha, sigma, "v_prediction"), ref, rtol=1e-6, atol=1e-6)


def test_unknown_prediction_type_is_user_error():
    x = torch.zeros(1)
    with pytest.raises(UserError, match="prediction_type"):
        to_x0_eps(x, x, x + 1, x + 1, "flow")
    with pytest.raises(UserError):
        from_x0_eps(x, x, x, x, "v")


def test_consistency_scalings_equal_lcm_scheduler_everywhere():
    lcm = LCMScheduler.from_config(SD15)
    t = torch.arange(1000)
    c_skip, c_out = consistency_scalings(t)
    ref = torch.tensor([lcm.get_scalings_for_boundary_condition_discrete(int(i)) for i in t])
    torch.testing.assert_close(c_skip, ref[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(c_out, ref[:, 1], rtol=1e-6, atol=0)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_skip[999].item() < 1e-6 and c_out[999].item() > 0.999999


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_error_scale_relates_target_and_x0_errors(prediction_type: str) -> None:
    """For fixed z_t, perturbing x̂0 by d changes the model's target by sqrt(k)·|d|."""
    from distill_diffusion.core.parameterization import x0_error_scale

    torch.manual_seed(0)
    alpha = torch.tensor([0.9, 0.5, 0.1]).reshape(3, 1, 1, 1)
    sigma = (1 - alpha**2).sqrt()
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    z = alpha * x0 + sigma * eps
    x0_hat = x0 + 0.01 * torch.randn_like(x0)
    eps_hat = (z - alpha * x0_hat) / sigma  # same z_t, consistent (x̂0, ε̂)
    err_target = (from_x0_eps(x0, eps, alpha, sigma, prediction_type) - from_x0_eps(x0_hat, eps_hat, alpha, sigma, prediction_type)) ** 2
    err_x0 = (x0 - x0_hat) ** 2
    k = x0_error_scale(alpha.double(), sigma.double(), prediction_type)
    torch.testing.assert_close(err_target.sum(dim=(1, 2, 3)), (k.flatten() * err_x0.sum(dim=(1, 2, 3))))
