"""Tests for the toy tokenizer and the random-initialised tiny SD pipeline (distill_diffusion.toy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from distill_diffusion.errors import UserError
from distill_diffusion.toy.tiny import build_tiny_components, init_toy, save_tiny_pipeline
from distill_diffusion.toy.tokenizer import BOS, EOS, build_tokenizer
from distill_diffusion.toy.world import VOCABULARY

PROMPTS = ["a red circle", "a blue star on a gray background", "Ünïcødé ☃ text, 123!", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


def test_tokenizer_pads_to_77_with_bos_and_eos(tokenizer):
    ids = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert tokenizer.model_max_length == 77
    for row, text in zip(ids, PROMPTS):
        assert len(row) == 77 and row[0] == tokenizer.bos_token_id
        body = tokenizer(text).input_ids
        assert body[-1] == tokenizer.eos_token_id
        # unk is <|endoftext|>; byte-level BPE must never need it inside the text.
        assert tokenizer.eos_token_id not in body[1:-1] and tokenizer.bos_token_id not in body[1:-1]
        assert row[len(body):] == [tokenizer.pad_token_id] * (77 - len(body))
    assert tokenizer.pad_token == EOS and tokenizer.bos_token == BOS


def test_toy_words_are_single_tokens(tokenizer):
    for word in VOCABULARY:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert tokenizer.decode(tokenizer("a Red Circle").input_ids, skip_special_tokens=True) == "a red circle"


def test_long_prompts_truncate(tokenizer):
    ids = tokenizer(["red " * 200], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_round_trips_through_save_and_load(tmp_path, tokenizer):
    build_tokenizer(save_dir=tmp_path / "tok")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    loaded = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.model_max_length == 77 and len(loaded) == len(tokenizer)
    assert loaded(PROMPTS, padding="max_length", max_length=77).input_ids == tokenizer(
        PROMPTS, padding="max_length", max_length=77
    ).input_ids
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert vocab == tokenizer.get_vocab()


def test_components_are_deterministic_small_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_components(seed=0)
    assert torch.equal(torch.rand(3), expected)
    b = build_tiny_components(seed=0)
    c = build_tiny_components(seed=1)
    wa, wb, wc = (x["unet"].conv_in.weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    count = sum(p.numel() for p in a["unet"].parameters())
    assert 500_000 < count < 2_000_000
    assert a["unet"].config.cross_attention_dim == a["text_encoder"].config.hidden_size
    assert a["text_encoder"].config.vocab_size == len(a["tokenizer"])
    assert 2 ** (len(a["vae"].config.block_out_channels) - 1) == 4  # 32^2 images -> 8x8x4 latents
    sched = a["scheduler"].config
    assert (sched.num_train_timesteps, sched.beta_schedule, sched.beta_start, sched.beta_end) == (
        1000, "scaled_linear", 0.00085, 0.012)
    assert sched.steps_offset == 1 and not sched.clip_sample and not sched.set_alpha_to_one


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prediction_type_reaches_scheduler(prediction_type):
    parts = build_tiny_components(prediction_type=prediction_type)
    assert parts["scheduler"].config.prediction_type == prediction_type


def test_bad_build_arguments():
    with pytest.raises(UserError, match="prediction_type"):
        build_tiny_components(prediction_type="flow")
    with pytest.raises(UserError, match="resolution"):
        build_tiny_components(resolution=40)


def test_stock_pipeline_loads_and_samples(saved_pipeline):
    pipe = StableDiffusionPipeline.from_pretrained(saved_pipeline, safety_checker=None)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    out = pipe(
        ["a red circle", "a green cross"],
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()


def test_init_toy_writes_data_and_teacher(tmp_path):
    paths = init_toy(tmp_path / "toy", num_images=8)
    assert (paths["data"] / "metadata.jsonl").is_file() and len(list(paths["data"].glob("*.png"))) == 8
    assert (paths["teacher"] / "model_index.json").is_file()
    assert (paths["teacher"] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
