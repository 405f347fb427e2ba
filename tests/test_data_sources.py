"""Tests for the three training-data sources (image folder, `datasets`, webdataset) and collation."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from distill_diffusion.config import DataConfig
from distill_diffusion.data import build_train_dataset, collate_examples, dataset_captions
from distill_diffusion.errors import UserError

R = 16


def png_bytes(seed: int, size: tuple[int, int] = (24, 16), fmt: str = "PNG") -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def make_folder(root: Path, n: int = 6, caption_key: str = "text") -> Path:
    """Image folder with n noise PNGs and metadata.jsonl captions "caption i"."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (root / f"{i}.png").write_bytes(png_bytes(i))
        lines.append(json.dumps({"file_name": f"{i}.png", caption_key: f"caption {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_shards(root: Path, n_shards: int = 2, per_shard: int = 5) -> str:
    """Tar shards of <key>.jpg/.png + <key>.txt; returns a brace spec."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                key, idx = f"s{s}_{i:04d}", s * per_shard + i
                ext, fmt = ("jpg", "JPEG") if i % 2 else ("png", "PNG")
                for name, data in ((f"{key}.{ext}", png_bytes(idx, fmt=fmt)), (f"{key}.txt", f"caption {idx}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"shard-{{000..{n_shards - 1:03d}}}.tar")


def check_item(item: dict) -> None:
    assert item["pixel_values"].shape == (3, R, R) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert isinstance(item["text"], str)


# -- image folder ---------------------------------------------------------------------------------


def test_imagefolder_items_and_captions(tmp_path: Path) -> None:
    ds = build_train_dataset(DataConfig(train_data_dir=str(make_folder(tmp_path)), resolution=R))
    assert len(ds) == 6 and ds.bad_count == 0
    for i in range(6):
        check_item(ds[i])
        assert ds[i]["text"] == f"caption {i}"


def test_imagefolder_nested_split_and_caption_column(tmp_path: Path) -> None:
    make_folder(tmp_path / "validation", n=3, caption_key="caption")
    cfg = DataConfig(train_data_dir=str(tmp_path), resolution=R, dataset_split="validation", caption_column="caption")
    ds = build_train_dataset(cfg)
    assert len(ds) == 3 and ds[2]["text"] == "caption 2"


def test_imagefolder_max_train_samples_is_a_seeded_subset(tmp_path: Path) -> None:
    cfg = DataConfig(train_data_dir=str(make_folder(tmp_path, n=10)), resolution=R, max_train_samples=4)
    a, b = build_train_dataset(cfg, seed=0), build_train_dataset(cfg, seed=0)
    assert len(a) == 4 and [a[i]["text"] for i in range(4)] == [b[i]["text"] for i in range(4)]
    c = build_train_dataset(cfg, seed=1)
    assert {a[i]["text"] for i in range(4)} != {c[i]["text"] for i in range(4)}


def test_flip_follows_seed_and_epoch_and_is_reproducible(tmp_path: Path) -> None:
    cfg = DataConfig(train_data_dir=str(make_folder(tmp_path, n=8)), resolution=R, random_flip=True)
    ds, again = build_train_dataset(cfg, seed=3), build_train_dataset(cfg, seed=3)
    first = torch.stack([ds[i]["pixel_values"] for i in range(8)])
    assert torch.equal(first, torch.stack([again[i]["pixel_values"] for i in range(8)]))  # resume-safe
    ds.set_epoch(1)
    assert not torch.equal(first, torch.stack([ds[i]["pixel_values"] for i in range(8)]))
    plain = build_train_dataset(DataConfig(train_data_dir=cfg.train_data_dir, resolution=R), seed=3)
    assert not torch.equal(first, torch.stack([plain[i]["pixel_values"] for i in range(8)]))


def test_caption_dropout_all_and_none(tmp_path: Path) -> None:
    folder = str(make_folder(tmp_path))
    ds = build_train_dataset(DataConfig(train_data_dir=folder, resolution=R, proportion_empty_prompts=1.0))
    assert [ds[i]["text"] for i in range(6)] == [""] * 6
    ds = build_train_dataset(DataConfig(train_data_dir=folder, resolution=R, proportion_empty_prompts=0.0))
    assert all(ds[i]["text"] for i in range(6))


def test_center_crop_flag_changes_pixels(tmp_path: Path) -> None:
    folder = str(make_folder(tmp_path))
    center = build_train_dataset(DataConfig(train_data_dir=folder, resolution=R, center_crop=True))
    random_crop = build_train_dataset(DataConfig(train_data_dir=folder, resolution=R, center_crop=False))
    assert any(not torch.equal(center[i]["pixel_values"], random_crop[i]["pixel_values"]) for i in range(6))


def test_collate_and_dataloader_with_workers(tmp_path: Path) -> None:
    ds = build_train_dataset(DataConfig(train_data_dir=str(make_folder(tmp_path)), resolution=R))
    batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_examples, num_workers=2))
    assert batches[0]["pixel_values"].shape == (4, 3, R, R) and batches[1]["pixel_values"].shape == (2, 3, R, R)
    assert batches[0]["text"] == [f"caption {i}" for i in range(4)]


# -- datasets -------------------------------------------------------------------------------------


def hf_dataset(n: int = 5, image_col: str = "image", caption_col: str = "text", lists: bool = False):
    import datasets

    images = [Image.open(io.BytesIO(png_bytes(i))) for i in range(n)]
    captions = [[f"c{i}a", f"c{i}b"] if lists else f"caption {i}" for i in range(n)]
    return datasets.Dataset.from_dict({image_col: images, caption_col: captions},
                                      features=datasets.Features({image_col: datasets.Image(),
                                                                  caption_col: datasets.List(datasets.Value("string")) if lists else datasets.Value("string")}))


def test_hf_save_to_disk_round_trip(tmp_path: Path) -> None:
    hf_dataset().save_to_disk(str(tmp_path / "ds"))
    ds = build_train_dataset(DataConfig(source="hf", dataset_name=str(tmp_path / "ds"), resolution=R))
    assert len(ds) == 5 and ds.bad_count == 0
    for i in range(5):
        check_item(ds[i])
        assert ds[i]["text"] == f"caption {i}"


def test_hf_dataset_dict_split_custom_columns_and_caption_lists(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"train": hf_dataset(2), "extra": hf_dataset(4, "img", "captions", lists=True)}).save_to_disk(str(tmp_path / "dd"))
    cfg = DataConfig(source="hf", dataset_name=str(tmp_path / "dd"), dataset_split="extra", image_column="img",
                     caption_column="captions", resolution=R, max_train_samples=3)
    ds = build_train_dataset(cfg)
    assert len(ds) == 3
    texts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        texts.update(ds[i]["text"] for i in range(3))
    check_item(ds[0])
    assert all(t[-1] in "ab" for t in texts) and len(texts) > 3  # one of the list, chosen at random


def test_dataset_captions_in_order_without_dropout(tmp_path: Path) -> None:
    """Prompts for prepare-synthetic: one caption per image, in order; a caption list gives one of its entries."""
    folder = make_folder(tmp_path / "f", n=4)
    cfg = DataConfig(train_data_dir=str(folder), resolution=R, proportion_empty_prompts=1.0)
    assert dataset_captions(cfg) == [f"caption {i}" for i in range(4)]
    hf_dataset(3, lists=True).save_to_disk(str(tmp_path / "ds"))
    captions = dataset_captions(DataConfig(source="hf", dataset_name=str(tmp_path / "ds"), resolution=R))
    assert [c[:-1] for c in captions] == ["c0", "c1", "c2"] and all(c[-1] in "ab" for c in captions)
    with pytest.raises(UserError, match="captions are read from data.source imagefolder or hf"):
        dataset_captions(DataConfig(source="webdataset", shards=make_shards(tmp_path / "w"), resolution=R))


# -- webdataset -----------------------------------------------------------------------------------


def test_webdataset_yields_every_sample_once(tmp_path: Path) -> None:
    spec = make_shards(tmp_path)
    ds = build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R))
    assert isinstance(ds, IterableDataset)
    items = list(ds)
    for item in items:
        check_item(item)
    assert sorted(i["text"] for i in items) == sorted(f"caption {i}" for i in range(10))


def test_webdataset_with_workers_and_max_samples(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, n_shards=4, per_shard=3)
    ds = build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R))
    texts = [t for b in DataLoader(ds, batch_size=2, collate_fn=collate_examples, num_workers=2) for t in b["text"]]
    assert sorted(texts) == sorted(f"caption {i}" for i in range(12))
    limited = build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R, max_train_samples=5))
    assert len(list(limited)) == 5
    texts = [t for b in DataLoader(limited, batch_size=1, collate_fn=collate_examples, num_workers=2) for t in b["text"]]
    assert len(texts) == 5


def test_webdataset_epochs_are_seeded(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, n_shards=3, per_shard=4)
    cfg = DataConfig(source="webdataset", shards=spec, resolution=R, random_flip=True)
    ds = build_train_dataset(cfg, seed=0)
    first = [i["text"] for i in ds]
    assert first == [i["text"] for i in build_train_dataset(cfg, seed=0)]
    ds.set_epoch(1)
    assert [i["text"] for i in ds] != first


def test_webdataset_missing_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_shards(tmp_path)
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(UserError, match=r"pip install 'distill-diffusion\[webdataset\]'"):
        build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R))


def test_collate_rejects_empty_batch() -> None:
    with pytest.raises(UserError, match="empty batch"):
        collate_examples([])
