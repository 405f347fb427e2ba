"""CLIP score (Hessel et al. 2021, torchmetrics scaling) on a tiny random transformers CLIPModel."""

from __future__ import annotations

import string
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from distill_diffusion.errors import UserError
from distill_diffusion.eval import clip_score, load_clip

PROMPTS = ["a red circle", "a blue square on the left", "green triangle", "a small yellow star"]


def make_tokenizer() -> CLIPTokenizer:
    """The toy tokenizer when it exists; else a character-level CLIP BPE (any lowercase text tokenises)."""
    try:
        from distill_diffusion.toy.tokenizer import build_tokenizer

        return build_tokenizer()
    except ImportError:
        pass
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def tiny_clip():
    tok = make_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def toy_images(n: int = 4, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def manual_cosines(model, processor, images, prompts) -> torch.Tensor:
    """Independent path: CLIPModel.forward's normalised embeddings, cos = diag(logits) / logit_scale."""
    pixels = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    return out.logits_per_image.diagonal() / model.logit_scale.detach().exp()


def test_clip_score_matches_manual_cosine(tiny_clip):
    model, processor = tiny_clip
    images = toy_images()
    mean, per_image = clip_score(model, processor, images, PROMPTS, batch_size=3)
    expected = 100 * manual_cosines(model, processor, images, PROMPTS).clamp(min=0)
    assert per_image.shape == (4,) and per_image.dtype == torch.float32
    torch.testing.assert_close(per_image, expected, rtol=1e-4, atol=1e-4)
    assert ((per_image >= 0) & (per_image <= 100)).all()
    assert mean == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-4)
    # pairing matters: reversing the prompts changes the per-image scores
    assert not torch.allclose(clip_score(model, processor, images, PROMPTS[::-1])[1], per_image)


class FixedFeatures(torch.nn.Module):
    """Duck-typed model whose get_*_features return plain tensors (transformers 4.x style)."""

    def __init__(self, image_feats: torch.Tensor, text_feats: torch.Tensor):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.image_feats, self.text_feats = image_feats, text_feats

    def get_image_features(self, pixel_values):
        return self.image_feats[: pixel_values.shape[0]]

    def get_text_features(self, input_ids, attention_mask=None):
        return self.text_feats[: input_ids.shape[0]]


def test_clip_score_tensor_outputs_and_negative_cosine_clamped(tiny_clip):
    _, processor = tiny_clip
    image_feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text_feats = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [4.0, 3.0]])
    model = FixedFeatures(image_feats, text_feats)
    proc = SimpleNamespace(tokenizer=processor.tokenizer, image_processor=processor.image_processor)
    mean, per_image = clip_score(model, proc, toy_images(3), PROMPTS[:3])
    torch.testing.assert_close(per_image, torch.tensor([100.0, 0.0, 96.0]))
    assert mean == pytest.approx(196.0 / 3)


def test_clip_score_input_checks(tiny_clip):
    model, processor = tiny_clip
    with pytest.raises(TypeError, match="uint8"):
        clip_score(model, processor, torch.rand(2, 3, 32, 32), PROMPTS[:2])
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(model, processor, toy_images(2), PROMPTS[:3])


def test_load_clip_local_folder_and_errors(tiny_clip, tmp_path):
    model, processor = tiny_clip
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    loaded, loaded_processor = load_clip(str(tmp_path / "clip"))
    assert not any(p.requires_grad for p in loaded.parameters())
    images = toy_images(2)
    torch.testing.assert_close(
        clip_score(loaded, loaded_processor, images, PROMPTS[:2])[1],
        clip_score(model, processor, images, PROMPTS[:2])[1],
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(UserError, match="no such folder"):
        load_clip(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load CLIP model"):
        load_clip(str(tmp_path / "empty"))
