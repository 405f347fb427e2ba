"""Tests for the denoiser adapter and prompt/image encoding (distill_diffusion.models.denoiser / encode)."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.errors import UserError
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.encode import decode_latents, encode_images, encode_prompt, tokenize_prompts
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG, build_tiny_components

SCHEDULE = NoiseSchedule.from_scheduler_config(SD15_SCHEDULER_CONFIG)


class FakeUNet(torch.nn.Module):
    """One underlying denoiser, x0_hat = tanh(z) * 0.5 + mean(c), reported in a chosen parameterisation.

    The v and eps formulas are written out here (not taken from core) so the test checks the adapter
    against an independent statement of v = alpha*eps - sigma*x0.
    """

    def __init__(self, prediction_type: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.prediction_type = prediction_type
        self.scale = torch.nn.Parameter(torch.ones((), dtype=dtype))
        self.kwargs = {}

    def forward(self, z, t, encoder_hidden_states, return_dict=True, **kwargs):
        self.kwargs = kwargs
        z32 = z.float()
        alpha = SCHEDULE.alpha(t).view(-1, 1, 1, 1)
        sigma = SCHEDULE.sigma(t).view(-1, 1, 1, 1)
        x0 = torch.tanh(z32) * 0.5 + encoder_hidden_states.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        eps = (z32 - alpha * x0) / sigma
        out = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[self.prediction_type]
        return (out.to(z.dtype) * self.scale,)


def _inputs(batch=3):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 999][:batch])
    c = torch.randn(batch, 77, 16, generator=gen)
    return z, t, c


def test_eps_v_and_sample_models_of_one_denoiser_agree():
    z, t, c = _inputs()
    outs = {p: Denoiser(FakeUNet(p), SCHEDULE, p)(z, t, c) for p in ("epsilon", "v_prediction", "sample")}
    ref = outs["sample"]
    for p, out in outs.items():
        assert torch.allclose(out.x0, ref.x0, atol=1e-4), p
        assert torch.allclose(out.eps, ref.eps, atol=1e-4), p
    # The raw outputs differ, so the adapter really converted them.
    assert not torch.allclose(outs["epsilon"].model_output, outs["v_prediction"].model_output, atol=1e-2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_target_is_what_a_perfect_model_outputs(prediction_type):
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 700])
    z_t = SCHEDULE.add_noise(x0, eps, t)
    denoiser = Denoiser(None, SCHEDULE, prediction_type)
    target = denoiser.target(x0, eps, t)

    class Perfect(torch.nn.Module):
        def forward(self, z, t, encoder_hidden_states, return_dict=True):
            return (target,)

    denoiser.unet = Perfect()
    out = denoiser(z_t, t, torch.zeros(2, 77, 8))
    assert torch.allclose(out.x0, x0, atol=1e-3) and torch.allclose(out.eps, eps, atol=1e-3)
    assert torch.equal(out.model_output, target)


def test_outputs_are_float32_for_a_bf16_unet_and_scalar_t_works():
    z, _, c = _inputs(2)
    unet = FakeUNet("v_prediction", dtype=torch.bfloat16)
    out = Denoiser(unet, SCHEDULE, "v_prediction")(z, 400, c.bfloat16(), timestep_cond=None)
    assert out.x0.dtype == out.eps.dtype == out.model_output.dtype == torch.float32
    assert out.x0.shape == z.shape and "timestep_cond" in unet.kwargs
    assert Denoiser(unet, SCHEDULE, "v_prediction").target(z.bfloat16(), z.bfloat16(), 400).dtype == torch.float32


def test_unknown_prediction_type():
    with pytest.raises(UserError, match="prediction_type"):
        Denoiser(None, SCHEDULE, "flow")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


def test_real_tiny_unet_in_bf16(tiny):
    unet = tiny["unet"].to(torch.bfloat16)
    try:
        z, t, _ = _inputs(2)
        c = torch.randn(2, 77, unet.config.cross_attention_dim)
        out = Denoiser(unet, SCHEDULE, "epsilon")(z, t[:2], c)
        assert out.x0.dtype == torch.float32 and out.x0.shape == z.shape and torch.isfinite(out.x0).all()
    finally:
        tiny["unet"].to(torch.float32)


def test_encode_prompt_matches_the_stock_pipeline(tiny):
    prompts = ["a red circle", "", "a blue star on a black background"]
    emb = encode_prompt(tiny["tokenizer"], tiny["text_encoder"], prompts)
    assert emb.shape == (3, 77, tiny["text_encoder"].config.hidden_size)
    assert tokenize_prompts(tiny["tokenizer"], prompts).shape == (3, 77)
    pipe = StableDiffusionPipeline(**tiny, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    assert torch.allclose(emb, ref)


def test_encode_and_decode_images(tiny):
    vae = tiny["vae"]
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = encode_images(vae, pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    again = encode_images(vae, pixels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(latents, again)
    manual = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0)) * vae.config.scaling_factor
    assert torch.allclose(latents, manual)
    images = decode_latents(vae, latents)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    direct = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(images, direct)
