"""Known-answer tests for core.guidance: the two CFG conventions and the LCM w-embedding."""

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline

from distill_diffusion.core import (
    cfg,
    cfg_lcm,
    guidance_embedding,
    guidance_scale_to_lcm_w,
    lcm_w_to_guidance_scale,
    sample_lcm_w,
)


def _pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)


def test_no_guidance_returns_cond_exactly():
    cond, uncond = _pair()
    assert torch.equal(cfg(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_lcm(cond, uncond, 0.0), cond)
    assert torch.equal(cfg(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("g", [1.5, 3.0, 7.5])
def test_conventions_differ_by_one(g):
    cond, uncond = _pair()
    w = guidance_scale_to_lcm_w(g)
    assert w == g - 1 and lcm_w_to_guidance_scale(w) == g
    torch.testing.assert_close(cfg(cond, uncond, g), cfg_lcm(cond, uncond, w))
    torch.testing.assert_close(cfg(cond, uncond, g), uncond + g * (cond - uncond))
    assert not torch.allclose(cfg(cond, uncond, g), cfg_lcm(cond, uncond, g))


@pytest.mark.parametrize(("g_min", "g_max"), [(6.0, 16.0), (2.0, 8.0), (2.0, 2.0), (1.0, 3.5)])
def test_sample_lcm_w_draws_w_uniformly_from_the_converted_bounds(g_min, g_max):
    torch.manual_seed(0)
    w = sample_lcm_w(1000, g_min, g_max, "cpu")
    torch.manual_seed(0)
    assert torch.equal(w, torch.rand(1000) * ((g_max - 1) - (g_min - 1)) + (g_min - 1))  # one draw, w = g − 1
    assert w.dtype == torch.float32 and float(w.min()) >= g_min - 1 and float(w.max()) <= g_max - 1


def test_per_sample_tensor_scale():
    cond, uncond = _pair()
    g = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    out = cfg(cond, uncond, g)
    for i in range(3):
        torch.testing.assert_close(out[i], cfg(cond[i], uncond[i], float(g[i])))


def _reference_embedding(w, dim):
    # The LCM scripts' guidance_scale_embedding, written out.
    w = w * 1000.0
    half = dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=torch.float32) * -emb)
    emb = w.to(torch.float32)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


@pytest.mark.parametrize("dim", [256, 7, 32])
def test_guidance_embedding_matches_reference(dim):
    w = torch.tensor([0.0, 2.0, 7.5, 14.0])
    emb = guidance_embedding(w, dim)
    assert emb.shape == (4, dim)
    torch.testing.assert_close(emb, _reference_embedding(w, dim), rtol=0, atol=0)
    ref_pipe = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    torch.testing.assert_close(emb, ref_pipe, rtol=0, atol=0)
    if dim % 2 == 1:
        assert torch.all(emb[:, -1] == 0)
    assert not torch.equal(emb[1], emb[2])


def test_guidance_embedding_rejects_tiny_dim():
    with pytest.raises(ValueError):
        guidance_embedding(torch.tensor([1.0]), 2)
