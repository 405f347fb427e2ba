"""The Conditioning object: the batch operations methods use on it, and the UNet arguments it gives."""

from __future__ import annotations

import pytest
import torch

from distill_diffusion.errors import UserError
from distill_diffusion.models.conditioning import (
    Conditioning,
    as_conditioning,
    cat,
    micro_conditioning_ids,
    pooled_text_width,
)


def _xl(n: int = 3) -> Conditioning:
    ids = torch.tensor([[64, 48, 2, 1, 32, 32]] * n) + torch.arange(n)[:, None]
    return Conditioning(torch.randn(n, 5, 8), torch.randn(n, 4), ids)


def test_rows_len_cat_expand_detach() -> None:
    c = _xl()
    assert len(c) == 3
    assert torch.equal(c[1].time_ids, c.time_ids[1:2]) and len(c[-1]) == 1
    picked = c[torch.tensor([2, 0])]
    assert torch.equal(picked.text_embeds, c.text_embeds[[2, 0]])
    both = cat([c, c[:1]])
    assert len(both) == 4 and torch.equal(both.encoder_hidden_states[3], c.encoder_hidden_states[0])
    assert torch.equal(both.time_ids[3], c.time_ids[0])
    wide = c[:1].expand(5)
    assert wide.encoder_hidden_states.shape == (5, 5, 8) and wide.time_ids.shape == (5, 6)
    grad = Conditioning(torch.randn(2, 5, 8, requires_grad=True))
    assert not grad.detach().encoder_hidden_states.requires_grad


def test_to_casts_embeddings_not_time_ids() -> None:
    c = _xl().to(torch.float16)
    assert c.encoder_hidden_states.dtype == torch.float16 and c.text_embeds.dtype == torch.float16
    assert c.time_ids.dtype == torch.long
    assert c.to("cpu", torch.float32).dtype == torch.float32


def test_unet_kwargs_sd_and_sdxl() -> None:
    sd = as_conditioning(torch.randn(2, 5, 8))
    assert set(sd.unet_kwargs()) == {"encoder_hidden_states"}
    kwargs = _xl().unet_kwargs(torch.float16)
    assert kwargs["encoder_hidden_states"].dtype == torch.float16
    assert set(kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    assert kwargs["added_cond_kwargs"]["time_ids"].dtype == torch.float16  # diffusers passes them in the UNet's dtype


def test_zeros_keep_time_ids_and_pooled() -> None:
    c = _xl()
    z = c.zeros_like()
    assert not z.encoder_hidden_states.any() and not z.text_embeds.any() and torch.equal(z.time_ids, c.time_ids)
    assert torch.equal(c.pooled(), c.text_embeds)
    sd = Conditioning(torch.randn(2, 5, 8))
    assert torch.allclose(sd.pooled(), sd.encoder_hidden_states.mean(1))


def test_bad_time_ids_and_mixed_families_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="takes 6 values per sample") as info:
        Conditioning(torch.randn(2, 5, 8), torch.randn(2, 4), torch.zeros(2, 5))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="both text_embeds and time_ids"):
        Conditioning(torch.randn(2, 5, 8), torch.randn(2, 4))
    with pytest.raises(UserError, match="cannot concatenate"):
        cat([_xl(), Conditioning(torch.randn(3, 5, 8))])


def test_micro_conditioning_ids_and_pooled_width() -> None:
    ids = micro_conditioning_ids(torch.tensor([[600, 800]]), torch.tensor([[44, 144]]), (512, 512))
    assert ids.tolist() == [[600, 800, 44, 144, 512, 512]]
    xl = {"addition_embed_type": "text_time", "projection_class_embeddings_input_dim": 2816, "addition_time_embed_dim": 256,
          "cross_attention_dim": 2048}
    assert pooled_text_width(xl) == 1280
    assert pooled_text_width({"cross_attention_dim": [768, 768]}) == 768
