"""Tests for bad training data: each bad input is a one-line UserError naming the problem; corrupt
images are skipped and counted; all-bad and over-threshold datasets stop with a UserError."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill_diffusion.config import DataConfig
from distill_diffusion.data import build_train_dataset
from distill_diffusion.errors import UserError

R = 16


def png_bytes(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png(seed: int) -> bytes:
    """Valid header but the pixel data is cut (an interrupted copy): caught by the up-front check."""
    data = png_bytes(seed, (64, 64))
    return data[: len(data) // 2]


def corrupt_png(seed: int) -> bytes:
    """Structure intact (chunk CRCs fixed up) but the compressed pixels garbled: passes the up-front
    check, fails only on decode (the lazy path)."""
    data = bytearray(png_bytes(seed, (64, 64)))
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    body = bytes(b ^ 0x55 for b in data[start : start + length])
    data[start : start + length] = body
    data[start + length : start + length + 4] = zlib.crc32(b"IDAT" + body).to_bytes(4, "big")
    return bytes(data)


def make_folder(root: Path, files: dict[str, bytes], lines: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    if lines is None:
        lines = [json.dumps({"file_name": name, "text": f"caption {name}"}) for name in files]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(train_data_dir=str(root), resolution=R, **kw)


def build_quietly(cfg: DataConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_train_dataset(cfg)


def assert_one_line(exc: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(exc.value) and ";" in str(exc.value)  # "<problem>; <fix>"


# -- bad inputs: UserError naming the problem -----------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder") as exc:
        build_train_dataset(folder_cfg(tmp_path / "nope"))
    assert_one_line(exc)


def test_no_metadata(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(0))
    with pytest.raises(UserError, match="no metadata.jsonl") as exc:
        build_train_dataset(folder_cfg(tmp_path))
    assert_one_line(exc)


def test_malformed_json_line_is_named(tmp_path: Path) -> None:
    lines = [json.dumps({"file_name": "a.png", "text": "x"}), "", '{"file_name": "a.png", "text": ']
    make_folder(tmp_path, {"a.png": png_bytes(0)}, lines)
    with pytest.raises(UserError, match="line 3 is not valid JSON") as exc:
        build_train_dataset(folder_cfg(tmp_path))
    assert_one_line(exc)


def test_metadata_referencing_missing_files(tmp_path: Path) -> None:
    lines = [json.dumps({"file_name": n, "text": "x"}) for n in ("a.png", "gone.png", "gone2.png")]
    make_folder(tmp_path, {"a.png": png_bytes(0)}, lines)
    with pytest.raises(UserError, match=r"2 listed image file\(s\) do not exist.*gone.png") as exc:
        build_train_dataset(folder_cfg(tmp_path))
    assert_one_line(exc)


def test_missing_caption_column_lists_keys(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a.png": png_bytes(0)}, [json.dumps({"file_name": "a.png", "caption": "x"})])
    with pytest.raises(UserError, match=r"no 'text' caption key \(keys: file_name, caption\).*data.caption_column"):
        build_train_dataset(folder_cfg(tmp_path))


def test_missing_file_name_and_empty_metadata(tmp_path: Path) -> None:
    make_folder(tmp_path / "a", {"a.png": png_bytes(0)}, [json.dumps({"image": "a.png", "text": "x"})])
    with pytest.raises(UserError, match='no "file_name" key'):
        build_train_dataset(folder_cfg(tmp_path / "a"))
    make_folder(tmp_path / "b", {}, ["", "  "])
    with pytest.raises(UserError, match="lists no images"):
        build_train_dataset(folder_cfg(tmp_path / "b"))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"source": "imagefolder"}, "needs data.train_data_dir"),
        ({"source": "hf"}, "needs data.dataset_name"),
        ({"source": "webdataset"}, "needs data.shards"),
        ({"train_data_dir": "x", "shards": "y.tar"}, "data.shards='y.tar' has no effect with data.source=imagefolder"),
        ({"train_data_dir": "x", "image_column": "img"}, "data.image_column='img' has no effect"),
        ({"source": "webdataset", "shards": "y.tar", "dataset_split": "val"}, "data.dataset_split='val' has no effect"),
    ],
)
def test_source_fields_must_match_the_source(kwargs: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        build_train_dataset(DataConfig(resolution=R, **kwargs))


def test_hf_missing_column_lists_columns(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "caption": ["x"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(UserError, match=r"no column 'text' \(columns: image, caption\); set data.caption_column"):
        build_train_dataset(DataConfig(source="hf", dataset_name=str(tmp_path / "d"), resolution=R))


def test_hf_missing_local_path_and_split(tmp_path: Path) -> None:
    import datasets

    with pytest.raises(UserError, match="no such local path"):
        build_train_dataset(DataConfig(source="hf", dataset_name=str(tmp_path / "nothing"), resolution=R))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"dataset_split='test' is not in .*splits: train"):
        build_train_dataset(DataConfig(source="hf", dataset_name=str(tmp_path / "dd"), dataset_split="test", resolution=R))


# -- corrupt images: counted and skipped ----------------------------------------------------------


def test_unreadable_header_is_dropped_and_counted(tmp_path: Path) -> None:
    files = {f"{i}.png": png_bytes(i) for i in range(4)} | {"bad.png": b"not an image at all"}
    ds = build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=0.5))
    assert len(ds) == 4 and ds.bad_count == 1
    assert "bad.png" not in {ds[i]["text"] for i in range(4)}


def test_truncated_files_are_dropped_up_front(tmp_path: Path) -> None:
    files = {f"{i}.png": png_bytes(i) for i in range(3)} | {"cut.png": truncated_png(9)}
    ds = build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=0.5))
    assert len(ds) == 3 and ds.bad_count == 1
    with pytest.raises(UserError, match="1 of 4 images"):
        build_quietly(folder_cfg(tmp_path, max_bad_fraction=0.1))


def test_decode_failure_falls_through_and_is_counted(tmp_path: Path) -> None:
    files = {"0.png": png_bytes(0), "1.png": corrupt_png(1), "2.png": png_bytes(2)}
    ds = build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=0.5))
    assert len(ds) == 3 and ds.bad_count == 0  # the header is fine
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        item = ds[1]
    assert item["text"] == "caption 2.png" and ds.bad_count == 1
    assert ds[1]["text"] == "caption 2.png" and ds.bad_count == 1  # remembered, not decoded again


def test_all_bad_is_a_user_error(tmp_path: Path) -> None:
    files = {f"{i}.png": b"garbage" for i in range(3)}
    with pytest.raises(UserError, match="none of the 3 images could be read"):
        build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=1.0))


def test_over_threshold_up_front_is_a_user_error(tmp_path: Path) -> None:
    files = {f"{i}.png": png_bytes(i) for i in range(8)} | {"x.png": b"junk", "y.png": b"junk"}
    with pytest.raises(UserError, match=r"2 of 10 images \(20.0%\) are unreadable, over data.max_bad_fraction=0.1"):
        build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=0.1))
    assert len(build_quietly(folder_cfg(tmp_path, max_bad_fraction=0.2))) == 8


def test_over_threshold_lazily_is_a_user_error(tmp_path: Path) -> None:
    files = {"0.png": png_bytes(0), "1.png": corrupt_png(1), "2.png": corrupt_png(2), "3.png": png_bytes(3)}
    ds = build_quietly(folder_cfg(make_folder(tmp_path, files), max_bad_fraction=0.3))
    with pytest.raises(UserError, match="over data.max_bad_fraction=0.3"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds[1]  # 1 bad (25%) is tolerated, falls through to 2: 2 bad (50%) is not


def test_hf_corrupt_bytes_counted_and_all_bad_rejected(tmp_path: Path) -> None:
    import datasets

    good = {"bytes": png_bytes(0), "path": None}
    bad = {"bytes": b"junk", "path": None}
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [good, bad, good, good], "text": list("abcd")}, features=features).save_to_disk(str(tmp_path / "d"))
    ds = build_quietly(DataConfig(source="hf", dataset_name=str(tmp_path / "d"), resolution=R, max_bad_fraction=0.5))
    assert ds.bad_count == 1 and ds[1]["text"] == "c"  # probe found it; item 1 falls through to 2
    datasets.Dataset.from_dict({"image": [bad, bad], "text": ["a", "b"]}, features=features).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(UserError, match="could be read"):
        build_quietly(DataConfig(source="hf", dataset_name=str(tmp_path / "e"), resolution=R, max_bad_fraction=1.0))


# -- webdataset -----------------------------------------------------------------------------------


def write_tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_webdataset_missing_shard_and_wrong_keys(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"1 of 1 shard file\(s\) do not exist"):
        build_train_dataset(DataConfig(source="webdataset", shards=str(tmp_path / "x.tar"), resolution=R))
    spec = write_tar(tmp_path / "a.tar", {"k0.jpg": png_bytes(0), "k0.caption": b"hello"})
    with pytest.raises(UserError, match=r"no caption member \(txt; found: caption, jpg\); set data.caption_column"):
        build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R))
    ds = build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R, caption_column="caption"))
    assert [i["text"] for i in ds] == ["hello"]


def test_webdataset_corrupt_sample_skipped_and_counted(tmp_path: Path) -> None:
    members = {"k0.png": png_bytes(0), "k0.txt": b"a", "k1.png": b"junk", "k1.txt": b"b", "k2.png": png_bytes(2), "k2.txt": b"c"}
    ds = build_train_dataset(DataConfig(source="webdataset", shards=write_tar(tmp_path / "a.tar", members), resolution=R))
    with pytest.warns(UserWarning, match="skipping unusable sample"):
        texts = sorted(i["text"] for i in ds)
    assert texts == ["a", "c"] and ds.bad_count == 1


def test_webdataset_all_bad_is_a_user_error(tmp_path: Path) -> None:
    spec = write_tar(tmp_path / "a.tar", {"k0.png": b"junk", "k0.txt": b"a"})
    with pytest.raises(UserError, match="none of the first 1 samples could be decoded"):
        build_train_dataset(DataConfig(source="webdataset", shards=spec, resolution=R))


def test_webdataset_over_threshold_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import distill_diffusion.data.wds as wds_module

    monkeypatch.setattr(wds_module, "MIN_SEEN", 2)
    members = {"k0.png": png_bytes(0), "k0.txt": b"a", "k1.png": b"junk", "k1.txt": b"b", "k2.png": b"junk", "k2.txt": b"c"}
    cfg = DataConfig(source="webdataset", shards=write_tar(tmp_path / "a.tar", members), resolution=R, max_bad_fraction=0.4)
    ds = build_train_dataset(cfg)
    ds.shuffle_buffer = 1  # keep file order: good, bad, bad
    with pytest.raises(UserError, match="over data.max_bad_fraction=0.4"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(ds)
