"""Tests for image transforms and caption dropout: sizes, ranges, crop, flip, RGB conversion, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill_diffusion.data.transforms import (
    ImageTransform,
    drop_caption,
    item_rng,
    open_image,
    pick_caption,
    to_rgb,
)


def noise_image(width: int = 40, height: int = 24, seed: int = 0) -> Image.Image:
    """A random RGB image (every crop and flip changes the pixels)."""
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array)


def test_shape_and_range() -> None:
    out = ImageTransform(16)(noise_image(16, 16), item_rng(0, 0, 0))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.min() < -0.9 and out.max() > 0.9  # no resize here, so the full range shows


def test_black_and_white_map_to_minus_one_and_one() -> None:
    white = ImageTransform(8)(Image.new("RGB", (8, 8), (255, 255, 255)), item_rng(0, 0, 0))
    black = ImageTransform(8)(Image.new("RGB", (8, 8), (0, 0, 0)), item_rng(0, 0, 0))
    assert torch.all(white == 1.0) and torch.all(black == -1.0)


def test_center_crop_matches_resize_then_crop() -> None:
    img = noise_image(40, 24)
    out = ImageTransform(16, center_crop=True)(img, item_rng(0, 0, 0))
    resized = img.resize((27, 16), Image.Resampling.BILINEAR)  # shorter side 24 -> 16, 40 -> 26.67 -> 27
    expected = np.asarray(resized.crop((5, 0, 21, 16)), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(out, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)


def test_random_crop_varies_and_center_crop_does_not() -> None:
    img = noise_image(64, 16)
    random_crops = {ImageTransform(16, center_crop=False)(img, item_rng(s, 0, 0)).sum().item() for s in range(8)}
    center_crops = {ImageTransform(16, center_crop=True)(img, item_rng(s, 0, 0)).sum().item() for s in range(8)}
    assert len(random_crops) > 1 and len(center_crops) == 1


def test_random_flip_flips_some_items_only() -> None:
    img = noise_image(16, 16)
    plain = ImageTransform(16)(img, item_rng(0, 0, 0))
    outs = [ImageTransform(16, random_flip=True)(img, item_rng(s, 0, 0)) for s in range(16)]
    flipped = [torch.equal(o, plain.flip(-1)) for o in outs]
    unchanged = [torch.equal(o, plain) for o in outs]
    assert any(flipped) and any(unchanged) and all(a or b for a, b in zip(flipped, unchanged))


def test_no_flip_when_disabled() -> None:
    img = noise_image(16, 16)
    outs = [ImageTransform(16, random_flip=False)(img, item_rng(s, 0, 0)) for s in range(8)]
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_small_image_is_upscaled() -> None:
    assert ImageTransform(32)(noise_image(10, 6), item_rng(0, 0, 0)).shape == (3, 32, 32)


def test_interpolation_choice_matters_and_is_validated() -> None:
    img = noise_image(64, 64)
    bilinear = ImageTransform(16, interpolation="bilinear")(img, item_rng(0, 0, 0))
    lanczos = ImageTransform(16, interpolation="lanczos")(img, item_rng(0, 0, 0))
    assert not torch.equal(bilinear, lanczos)
    with pytest.raises(ValueError):
        ImageTransform(16, interpolation="nearest-ish")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_any_mode_becomes_three_channels(mode: str) -> None:
    img = noise_image(12, 12).convert(mode)
    assert ImageTransform(8)(img, item_rng(0, 0, 0)).shape == (3, 8, 8)


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_gives_equal_channels() -> None:
    out = ImageTransform(8)(noise_image(8, 8).convert("L"), item_rng(0, 0, 0))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_16bit_png_ramp_becomes_the_same_8bit_ramp(tmp_path) -> None:
    ramp = np.arange(256, dtype=np.uint16).reshape(1, 256).repeat(4, axis=0)
    Image.fromarray(ramp * 257).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as img:
        assert img.mode.startswith("I")
        rgb = np.asarray(to_rgb(img))
    assert rgb.dtype == np.uint8 and (rgb == ramp[..., None]).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([-2.0, 0.0, 2.0], [0, 128, 255]), ([float("nan"), 0.0, 1.0], [0, 0, 255])],
)
def test_float_images_scale_from_unit_range_or_min_max(values: list[float], expected: list[int]) -> None:
    img = Image.fromarray(np.array([values], dtype=np.float32))
    assert img.mode == "F"
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == expected


def test_open_image_accepts_bytes_dict_path(tmp_path) -> None:
    path = tmp_path / "a.png"
    noise_image(8, 8).save(path)
    data = path.read_bytes()
    for value in (path, str(path), data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}):
        assert open_image(value).size == (8, 8)
    with pytest.raises(TypeError):
        open_image(42)


def test_caption_dropout_proportions() -> None:
    texts = [drop_caption("a cat", 1.0, item_rng(0, 0, i)) for i in range(50)]
    assert texts == [""] * 50
    assert [drop_caption("a cat", 0.0, item_rng(0, 0, i)) for i in range(50)] == ["a cat"] * 50
    half = [drop_caption("a cat", 0.5, item_rng(0, 0, i)) for i in range(200)]
    assert 60 < half.count("") < 140


def test_pick_caption_from_list_and_none() -> None:
    picks = {pick_caption(["a", "b", "c"], item_rng(s, 0, 0)) for s in range(30)}
    assert picks == {"a", "b", "c"}
    assert pick_caption(None, item_rng(0, 0, 0)) == "" and pick_caption([], item_rng(0, 0, 0)) == ""
    assert pick_caption("x", item_rng(0, 0, 0)) == "x"
    assert pick_caption(np.array(["q"]), item_rng(0, 0, 0)) == "q"


def test_item_rng_is_deterministic_and_keyed() -> None:
    assert item_rng(1, 2, 3).random() == item_rng(1, 2, 3).random()
    assert item_rng(1, 2, 3).random() != item_rng(1, 3, 3).random()


def _jpeg_with_orientation(img: Image.Image, orientation: int | None) -> Image.Image:
    import io

    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buffer, format="JPEG", quality=95, exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_exif_orientation_is_applied() -> None:
    half = Image.new("RGB", (32, 32), (0, 0, 0))
    half.paste((255, 255, 255), (16, 0, 32, 32))  # right half white
    upright = ImageTransform(16)(_jpeg_with_orientation(half, None), item_rng(0, 0, 0))
    rotated = ImageTransform(16)(_jpeg_with_orientation(half, 3), item_rng(0, 0, 0))  # 3 = rotate 180°
    assert upright[:, :, -1].mean() > 0.9 and rotated[:, :, 0].mean() > 0.9


def test_jpeg_draft_decoding_matches_full_decode() -> None:
    img = noise_image(256, 128, seed=1).resize((32, 16)).resize((256, 128))  # smooth enough for JPEG
    jpeg = _jpeg_with_orientation(img, None)
    fast = ImageTransform(16)(jpeg, item_rng(0, 0, 0))  # draft decodes at 1/8 scale
    assert jpeg.size == (32, 16)
    slow = ImageTransform(16)(img, item_rng(0, 0, 0))
    assert fast.shape == slow.shape and (fast - slow).abs().mean() < 0.1
