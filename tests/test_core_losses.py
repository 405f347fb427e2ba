"""Known answers of the shared losses and weightings (core.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from distill_diffusion.core.losses import (
    distribution_matching_loss,
    l2,
    min_snr_weights,
    pseudo_huber,
    truncated_snr_weights,
    weighted_mse,
)


def test_pseudo_huber_known_values() -> None:
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([0.0, -1.0])
    # sqrt(0 + 1e-6) - 1e-3 = 0; sqrt(16 + 1e-6) - 1e-3 ≈ 3.999
    expected = (0.0 + math.sqrt(16 + 1e-6) - 1e-3) / 2
    assert pseudo_huber(pred, target, 1e-3).item() == pytest.approx(expected)
    assert pseudo_huber(pred.half(), target.half(), 1e-3).dtype == torch.float32


def test_l2_and_weighted_mse() -> None:
    pred = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 2.0]]]])
    target = torch.zeros_like(pred)
    assert l2(pred, target).item() == pytest.approx(2.5)
    assert weighted_mse(pred, target).item() == pytest.approx(2.5)
    assert weighted_mse(pred, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)


def test_snr_weightings_on_the_x0_error() -> None:
    snr, k = torch.tensor([0.5, 2.0, 10.0]), torch.tensor([1.0, 2.0, 4.0])
    assert min_snr_weights(snr, 5.0, k).tolist() == pytest.approx([0.5, 1.0, 1.25])
    assert truncated_snr_weights(snr, k).tolist() == pytest.approx([1.0, 1.0, 2.5])


def gaussian_x0(x_t: torch.Tensor, mean: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """E[x0 | x_t] for data x0 ~ N(mean, I) and x_t = α·x0 + σ·ε: the exact denoiser of a unit Gaussian."""
    return mean + alpha / (alpha**2 + sigma**2) * (x_t - alpha * mean)


def test_distribution_matching_gradient_is_zero_when_the_scores_agree() -> None:
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    x0_real = torch.randn(4, 3, 2, 2)
    distribution_matching_loss(x, x0_real, x0_real.clone()).backward()
    assert torch.count_nonzero(x.grad) == 0


def test_distribution_matching_moves_a_gaussian_generator_to_the_data() -> None:
    """A generator x = μ_g + z against data N(μ_r, I), both scores exact (DMD eq. 7 on a closed form): descending the
    loss moves μ_g towards μ_r, along μ_r − μ_g, and the gradient is the normalised score difference over the element
    count (the surrogate's only job)."""
    torch.manual_seed(0)
    mu_r, mu_g = torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3, requires_grad=True)
    alpha, sigma = 0.6, 0.8
    x = mu_g + torch.randn(4096, 3)
    x_t = alpha * x.detach() + sigma * torch.randn_like(x)
    real, fake = gaussian_x0(x_t, mu_r, alpha, sigma), gaussian_x0(x_t, mu_g.detach(), alpha, sigma)
    distribution_matching_loss(x, real, fake).backward()
    step = -mu_g.grad
    cosine = torch.nn.functional.cosine_similarity(step, mu_r - mu_g.detach(), dim=0)
    assert cosine > 0.999, (step, cosine)
    x2 = x.detach().requires_grad_(True)
    distribution_matching_loss(x2, real, fake).backward()
    scale = (x2.detach() - real).abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(x2.grad, (fake - real) / scale / x2.numel())


def test_distribution_matching_gives_no_nan_where_the_sample_is_the_real_prediction() -> None:
    x = torch.ones(2, 4, requires_grad=True)
    real = torch.stack([torch.ones(4), torch.zeros(4)])
    distribution_matching_loss(x, real, -torch.ones(2, 4)).backward()
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad[0]) == 0 and torch.count_nonzero(x.grad[1]) == 4
