"""Tests for the latent cache: round trip, reuse, stale rebuild, caption dropout, atomic files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from distill_diffusion.config import DataConfig
from distill_diffusion.data import (
    CachedLatentDataset,
    build_latent_cache,
    build_train_dataset,
    collate_examples,
    data_fingerprint,
    is_cache_valid,
    prepare_latent_cache,
)
from distill_diffusion.errors import UserError

R = 16


def make_folder(root: Path, n: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        array = np.random.default_rng(i).integers(0, 256, (R, R + 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines))
    return root


class FakeEncoders:
    """Stand-ins for the VAE and text encoder that count their calls."""

    def __init__(self) -> None:
        self.image_calls = self.text_calls = 0

    def images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return F.avg_pool2d(pixel_values, 4).half()  # [B, 3, R/4, R/4]

    def text(self, prompts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        codes = torch.tensor([float(sum(map(ord, p))) for p in prompts])
        return codes[:, None, None].expand(-1, 3, 2).clone()  # [B, L=3, D=2]


@pytest.fixture
def dataset_and_cfg(tmp_path: Path):
    cfg = DataConfig(train_data_dir=str(make_folder(tmp_path / "data")), resolution=R, proportion_empty_prompts=0.5,
                     cache_latents=True, cache_dir=str(tmp_path / "cache"))
    return build_train_dataset(cfg), cfg


def test_round_trip_matches_direct_encoding(dataset_and_cfg, tmp_path: Path) -> None:
    dataset, cfg = dataset_and_cfg
    enc = FakeEncoders()
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=2, shard_size=2)
    cached = CachedLatentDataset(tmp_path / "c")
    assert len(cached) == 5 and len(list((tmp_path / "c").glob("latents-*.safetensors"))) == 3
    for i in range(5):
        item = cached[i]
        assert item["text"] == f"caption {i}"  # the cache keeps real captions despite dataset dropout
        pixels = dataset[i]["pixel_values"][None]
        assert torch.equal(item["latents"], enc.images(pixels)[0])
        assert torch.equal(item["prompt_embeds"], enc.text([f"caption {i}"])[0])
    assert not list((tmp_path / "c").glob(".tmp-*"))


def test_valid_cache_is_reused_and_stale_cache_rebuilt(dataset_and_cfg, tmp_path: Path) -> None:
    dataset, cfg = dataset_and_cfg
    enc = FakeEncoders()
    fp = data_fingerprint(cfg, "model-a", seed=0)
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=2, fingerprint=fp)
    calls = enc.image_calls
    assert calls == 3 and is_cache_valid(tmp_path / "c", fp)
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=2, fingerprint=fp)
    assert enc.image_calls == calls  # reused
    stale = data_fingerprint(cfg, "model-b", seed=0)
    assert not is_cache_valid(tmp_path / "c", stale)
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=5, fingerprint=stale)
    assert enc.image_calls == calls + 1 and is_cache_valid(tmp_path / "c", stale)
    assert len(list((tmp_path / "c").glob("latents-*.safetensors"))) == 1  # old shards removed


def test_fingerprint_follows_data_changes_but_not_dropout(dataset_and_cfg) -> None:
    _, cfg = dataset_and_cfg
    base = data_fingerprint(cfg, "m")
    assert data_fingerprint(DataConfig(**{**cfg.__dict__, "proportion_empty_prompts": 0.9}), "m") == base
    assert data_fingerprint(DataConfig(**{**cfg.__dict__, "random_flip": True}), "m") != base
    assert data_fingerprint(cfg, "m", seed=1) != base
    Path(cfg.train_data_dir, "metadata.jsonl").write_text(Path(cfg.train_data_dir, "metadata.jsonl").read_text() + "\n\n")
    assert data_fingerprint(cfg, "m") != base


def test_incomplete_cache_is_rebuilt(dataset_and_cfg, tmp_path: Path) -> None:
    dataset, _ = dataset_and_cfg
    enc = FakeEncoders()
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=5)
    (tmp_path / "c" / "latents-00000.safetensors").unlink()
    assert not is_cache_valid(tmp_path / "c", {"dataset": type(dataset).__name__})
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=5)
    assert enc.image_calls == 2 and len(CachedLatentDataset(tmp_path / "c")) == 5


def test_a_truncated_shard_makes_the_cache_rebuilt(dataset_and_cfg, tmp_path: Path) -> None:
    """A shard cut short (a full disk, a killed copy) is present but unreadable: the cache is stale, not complete."""
    dataset, _ = dataset_and_cfg
    enc = FakeEncoders()
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=5)
    shard = tmp_path / "c" / "latents-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    assert not is_cache_valid(tmp_path / "c", {"dataset": type(dataset).__name__})
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c", batch_size=5)
    assert enc.image_calls == 2 and len(CachedLatentDataset(tmp_path / "c")) == 5


def test_caption_dropout_swaps_in_the_empty_embedding(dataset_and_cfg, tmp_path: Path) -> None:
    dataset, _ = dataset_and_cfg
    enc = FakeEncoders()
    build_latent_cache(dataset, enc.images, enc.text, tmp_path / "c")
    empty = enc.text([""])[0]
    always = CachedLatentDataset(tmp_path / "c", proportion_empty_prompts=1.0)
    assert all(always[i]["text"] == "" and torch.equal(always[i]["prompt_embeds"], empty) for i in range(5))
    never = CachedLatentDataset(tmp_path / "c", proportion_empty_prompts=0.0)
    assert all(not torch.equal(never[i]["prompt_embeds"], empty) for i in range(5))
    half = CachedLatentDataset(tmp_path / "c", proportion_empty_prompts=0.5, seed=0)
    draws = []
    for epoch in range(10):
        half.set_epoch(epoch)
        draws += [half[i]["text"] == "" for i in range(5)]
    assert 10 < sum(draws) < 40


def test_prepare_and_dataloader_with_workers(dataset_and_cfg) -> None:
    dataset, cfg = dataset_and_cfg
    enc = FakeEncoders()
    cached = prepare_latent_cache(cfg, dataset, enc.images, enc.text, model_key="m", batch_size=2)
    assert cached.proportion_empty_prompts == 0.5
    batches = list(DataLoader(cached, batch_size=3, collate_fn=collate_examples, num_workers=2))
    assert batches[0]["latents"].shape == (3, 3, R // 4, R // 4) and batches[0]["prompt_embeds"].shape == (3, 3, 2)
    assert batches[0]["latents"].dtype == torch.float16 and len(batches[1]["text"]) == 2


def test_errors(dataset_and_cfg, tmp_path: Path) -> None:
    dataset, cfg = dataset_and_cfg
    with pytest.raises(UserError, match="no latent cache in"):
        CachedLatentDataset(tmp_path / "nothing")
    no_dir = DataConfig(**{**cfg.__dict__, "cache_dir": None})
    with pytest.raises(UserError, match="data.cache_dir is empty"):
        prepare_latent_cache(no_dir, dataset, FakeEncoders().images, FakeEncoders().text, model_key="m")
