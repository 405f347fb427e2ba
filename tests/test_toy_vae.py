"""Tests for fitting and calibrating the toy VAE (distill_diffusion.toy.vae)."""

from __future__ import annotations

import torch

from distill_diffusion.toy.tiny import build_tiny_components
from distill_diffusion.toy.vae import calibrate_scaling_factor, reconstruct_uint8, toy_pixels, train_toy_vae


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


def test_training_is_seeded_and_ignores_the_global_rng():
    """Batches and posterior noise come from the seed alone: what ran before in the process changes nothing."""
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        vae = build_tiny_components(seed=0)["vae"]
        train_toy_vae(vae, steps=3, batch_size=4, num_images=16, seed=5)
        runs.append(vae.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(value, runs[1][name], rtol=0, atol=0, msg=name)


def test_reconstruct_uint8_is_encode_mode_then_decode():
    vae = build_tiny_components(seed=0)["vae"].eval()
    images = ((toy_pixels(3, seed=2) + 1) * 127.5).round().to(torch.uint8)
    out = reconstruct_uint8(vae, images, batch_size=2)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    with torch.no_grad():
        x = images.float() / 127.5 - 1
        expected = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert (out.float() - ((expected.clamp(-1, 1) + 1) * 127.5)).abs().max() <= 0.51
