"""Tests for fitting and calibrating the toy VAE (distill_diffusion.toy.vae)."""

from __future__ import annotations

import torch

from distill_diffusion.toy.tiny import build_tiny_components
from distill_diffusion.toy.vae import calibrate_scaling_factor, toy_pixels, train_toy_vae


def _mse(vae, pixels):
    with torch.no_grad():
        return float((vae.decode(vae.encode(pixels).latent_dist.mode()).sample - pixels).pow(2).mean())


def test_a_few_steps_reduce_reconstruction_error_and_recalibrate():
    vae = build_tiny_components(seed=0)["vae"]
    held_out = toy_pixels(16, seed=1)
    before = _mse(vae, held_out)
    metrics = train_toy_vae(vae, steps=25, batch_size=8, num_images=64, seed=0)
    assert not vae.training
    assert metrics["mse"] < 0.7 * before
    assert vae.config.scaling_factor == metrics["scaling_factor"]
    assert abs(calibrate_scaling_factor(vae) - metrics["scaling_factor"]) < 1e-6


def test_toy_pixels_range_and_shape():
    pixels = toy_pixels(4, resolution=32, seed=0)
    assert pixels.shape == (4, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
