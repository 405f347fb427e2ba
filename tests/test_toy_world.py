"""Tests for the toy world's procedural captioned dataset (distill_diffusion.toy.world)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from distill_diffusion.errors import UserError
from distill_diffusion.toy.world import VOCABULARY, make_toy_dataset, toy_images, toy_prompts


def _read(folder):
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_dataset_is_deterministic_and_prefix_stable(tmp_path):
    a = make_toy_dataset(tmp_path / "a", num_images=12, seed=3)
    b = make_toy_dataset(tmp_path / "b", num_images=12, seed=3)
    c = make_toy_dataset(tmp_path / "c", num_images=20, seed=3)
    d = make_toy_dataset(tmp_path / "d", num_images=12, seed=4)
    assert (a / "metadata.jsonl").read_bytes() == (b / "metadata.jsonl").read_bytes()
    for row in _read(a):
        assert (a / row["file_name"]).read_bytes() == (b / row["file_name"]).read_bytes()
        assert (a / row["file_name"]).read_bytes() == (c / row["file_name"]).read_bytes()
    assert _read(c)[:12] == _read(a)
    assert _read(d) != _read(a)


def test_metadata_is_a_valid_imagefolder(tmp_path):
    out = make_toy_dataset(tmp_path / "data", num_images=10, resolution=32, seed=0)
    rows = _read(out)
    assert len(rows) == 10
    assert sorted(p.name for p in out.glob("*.png")) == sorted(r["file_name"] for r in rows)
    for row in rows:
        assert set(row) == {"file_name", "text"} and row["text"]
        with Image.open(out / row["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (32, 32)


def test_loads_with_hf_imagefolder(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = make_toy_dataset(tmp_path / "data", num_images=6, seed=0)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 6 and set(ds.column_names) == {"image", "text"}
    assert sorted(ds["text"]) == sorted(r["text"] for r in _read(out))


def test_captions_name_colour_and_shape_but_not_layout():
    pairs = toy_images(300, resolution=32, seed=0)
    by_caption = defaultdict(list)
    for image, text in pairs:
        words = text.split()
        assert set(words) <= set(VOCABULARY), text
        assert not set(words) & {"left", "right", "top", "bottom", "small", "large", "big", "rotated", "centre"}
        by_caption[text].append(np.asarray(image))
    # One prompt, many images: repeated captions come with different pictures (size/position/rotation).
    repeated = [imgs for imgs in by_caption.values() if len(imgs) >= 2]
    assert repeated
    assert all(not np.array_equal(imgs[0], imgs[1]) for imgs in repeated)
    assert len(by_caption) > 40  # colours x shapes x backgrounds give a varied caption set


def test_images_vary_and_use_the_canvas():
    images = np.stack([np.asarray(img, dtype=np.float32) for img, _ in toy_images(64, resolution=32, seed=1)])
    assert images.shape == (64, 32, 32, 3)
    assert images.std(axis=0).mean() > 30  # not one fixed picture
    assert all(len(np.unique(img.reshape(-1, 3), axis=0)) > 2 for img in images[:8])  # shape + bg + AA edges


def test_toy_prompts_deterministic():
    assert toy_prompts(7, seed=2) == toy_prompts(7, seed=2)
    assert toy_prompts(7, seed=2) != toy_prompts(7, seed=5)
    assert len(toy_prompts(3)) == 3
    assert all(set(p.split()) <= set(VOCABULARY) for p in toy_prompts(50))


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"resolution": 20}, {"resolution": 8}])
def test_bad_arguments_raise_user_error(tmp_path, kwargs):
    with pytest.raises(UserError, match="num_images|resolution"):
        make_toy_dataset(tmp_path / "x", **kwargs)
