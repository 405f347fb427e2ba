"""SDXL micro-conditioning from the data: each image's original size and crop offset recorded at preprocessing (as
diffusers' SDXL training scripts), the fixed option, and a latent cache that keeps them with the pooled embeddings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distill_diffusion.config import DataConfig
from distill_diffusion.data import (
    CachedLatentDataset,
    build_latent_cache,
    build_train_dataset,
    collate_examples,
)
from distill_diffusion.data.transforms import ImageTransform, item_rng
from distill_diffusion.models.batch import batch_time_ids
from distill_diffusion.models.conditioning import Conditioning

R = 16


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_geometry_is_the_original_size_and_the_crop_in_the_resized_image() -> None:
    pixels, original, crop = ImageTransform(R, center_crop=True).with_geometry(_image(64, 32), item_rng(0, 0, 0))
    assert pixels.shape == (3, R, R) and original == (32, 64)
    assert crop == (0, 8)  # resized to 32x16, centre crop of 16 starts 8 px from the left
    for seed in range(6):  # random crops: the offset is where the pixels came from
        tf = ImageTransform(R, center_crop=False)
        image = _image(64, 32, seed)
        pixels, _, (top, left) = tf.with_geometry(image, item_rng(seed, 0, 0))
        resized = np.asarray(image.resize((32, 16), Image.Resampling.BILINEAR), dtype=np.float32)
        expected = torch.from_numpy(resized[top:top + R, left:left + R].copy()).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(pixels, expected)


def test_original_size_is_as_shown_after_the_exif_rotation() -> None:
    buffer, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 64 wide, shown 64 high
    _image(64, 32).save(buffer, format="JPEG", exif=exif)
    _, original, _ = ImageTransform(R).with_geometry(Image.open(io.BytesIO(buffer.getvalue())), item_rng(0, 0, 0))
    assert original == (64, 32)


def test_flipped_crops_are_measured_from_the_right_edge() -> None:
    flip = ImageTransform(R, center_crop=False, random_flip=True)
    plain = ImageTransform(R, center_crop=False)
    image = _image(64, 32)
    for seed in range(12):
        pixels, _, (_, left) = flip.with_geometry(image, item_rng(seed, 0, 0))
        unflipped, _, (_, left0) = plain.with_geometry(image, item_rng(seed, 0, 0))
        if not torch.equal(pixels, unflipped):  # this draw flipped: diffusers' script flips before cropping
            assert left == 32 - left0 - R


def test_fixed_micro_conditioning() -> None:
    _, original, crop = ImageTransform(R, center_crop=False, micro_conditioning="fixed").with_geometry(_image(64, 32), item_rng(0, 0, 0))
    assert original == (R, R) and crop == (0, 0)


def _folder(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    lines = []
    for i in range(n):
        buffer = io.BytesIO()
        _image(R + 8 * i, R, i).save(buffer, format="PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines))
    return root


def _text(prompts: list[str]) -> Conditioning:
    codes = torch.tensor([float(sum(map(ord, p))) for p in prompts])
    n = len(prompts)
    return Conditioning(codes[:, None, None].expand(-1, 3, 2).clone(), codes[:, None].expand(-1, 5).clone(),
                        torch.zeros(n, 6, dtype=torch.long))


def test_cache_round_trip_keeps_pooled_embeds_and_geometry(tmp_path: Path) -> None:
    cfg = DataConfig(train_data_dir=str(_folder(tmp_path / "data")), resolution=R, center_crop=False)
    dataset = build_train_dataset(cfg)
    batch = collate_examples([dataset[i] for i in range(3)])
    assert batch["original_size"].tolist() == [[R, R], [R, R + 8], [R, R + 16]]
    build_latent_cache(dataset, lambda px: F.avg_pool2d(px, 4), _text, tmp_path / "c", batch_size=2, shard_size=2)
    cached = CachedLatentDataset(tmp_path / "c", proportion_empty_prompts=0.0)
    items = collate_examples([cached[i] for i in range(3)])
    assert torch.equal(items["text_embeds"], _text(batch["text"]).text_embeds)
    assert torch.equal(items["original_size"], batch["original_size"]) and torch.equal(items["crop_top_left"], batch["crop_top_left"])
    assert torch.equal(batch_time_ids(items, (R, R)), batch_time_ids(batch, (R, R)))
    assert cached.empty_parts["text_embeds"].shape == (5,)
    dropped = CachedLatentDataset(tmp_path / "c", proportion_empty_prompts=1.0)[0]
    assert torch.equal(dropped["text_embeds"], _text([""]).text_embeds[0]) and dropped["text"] == ""
