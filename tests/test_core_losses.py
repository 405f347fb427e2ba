"""Known answers of the shared losses and weightings (core.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from distill_diffusion.core.losses import (
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
