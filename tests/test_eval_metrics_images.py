"""uint8 rounding, the resize policy and image-folder reading used by the evaluation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill_diffusion.errors import UserError
from distill_diffusion.eval import (
    ResizePolicy,
    load_image_folder,
    pil_to_uint8,
    resize_uint8,
    to_uint8,
    uint8_to_pil,
)


def test_to_uint8_rounds_to_nearest_not_truncates():
    k = torch.arange(0, 255, dtype=torch.float64)
    below, above = (k + 0.49) / 255, (k + 0.51) / 255
    torch.testing.assert_close(to_uint8(below.float(), "[0,1]"), k.to(torch.uint8))
    torch.testing.assert_close(to_uint8(above.float(), "[0,1]"), (k + 1).to(torch.uint8))
    # truncation ((x * 255).byte(), torchmetrics' normalize=True) would give k for both:
    assert not torch.equal((above.float() * 255).byte(), to_uint8(above.float(), "[0,1]"))


def test_to_uint8_ranges_clamping_and_passthrough():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert to_uint8(x, "[-1,1]").tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.1]), "[0,1]").tolist() == [0, 0, 128, 255, 255]
    u = torch.tensor([3, 7], dtype=torch.uint8)
    assert to_uint8(u, "[0,1]") is u
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(x, "0..1")
    with pytest.raises(UserError, match="NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]), "[0,1]")


@pytest.mark.parametrize("spec", ["none", "bicubic-256", "lanczos-64", "bicubic-32-nocrop"])
def test_resize_policy_describe_parse_round_trip(spec):
    assert ResizePolicy.parse(spec).describe() == spec


def test_resize_policy_parse_shorthands_and_errors():
    assert ResizePolicy.parse("256") == ResizePolicy(size=256)
    assert ResizePolicy.parse(None) == ResizePolicy() == ResizePolicy.parse("None")
    with pytest.raises(UserError, match="not understood"):
        ResizePolicy.parse("big")
    with pytest.raises(UserError, match="filter"):
        ResizePolicy(size=8, filter="nearest")
    with pytest.raises(UserError, match="positive"):
        ResizePolicy(size=0)


def test_resize_uint8_matches_pil_and_is_idempotent():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 20, 12), generator=g, dtype=torch.uint8)
    policy = ResizePolicy(size=8, filter="lanczos")
    out = resize_uint8(x, policy)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.uint8
    crop = uint8_to_pil(x)[1].crop((0, 4, 12, 16)).resize((8, 8), Image.Resampling.LANCZOS)
    assert torch.equal(out[1], pil_to_uint8([crop])[0])
    assert torch.equal(resize_uint8(out, policy), out)
    assert resize_uint8(x, ResizePolicy()) is x
    assert resize_uint8(x, ResizePolicy(size=8, center_crop=False)).shape == (2, 3, 8, 8)


def write_png(path, w, h, value, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).convert(mode).save(path)


def test_load_image_folder_batches_resize_and_order(tmp_path):
    write_png(tmp_path / "b.png", 20, 10, 50)
    write_png(tmp_path / "a.jpg", 10, 10, 100)
    write_png(tmp_path / "sub" / "c.png", 30, 30, 200, mode="L")  # grayscale → RGB
    write_png(tmp_path / ".hidden" / "d.png", 8, 8, 0)
    (tmp_path / "metadata.jsonl").write_text("{}\n")
    batches = list(load_image_folder(tmp_path, ResizePolicy(size=8), batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 8, 8), (1, 3, 8, 8)]
    assert all(b.dtype == torch.uint8 for b in batches)
    assert [int(b[i, 0, 4, 4]) for b in batches for i in range(len(b))] == [100, 50, 200]  # sorted paths
    assert sum(len(b) for b in load_image_folder(tmp_path, ResizePolicy(size=8), limit=2)) == 2


def test_load_image_folder_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        next(load_image_folder(tmp_path, ResizePolicy()))
    with pytest.raises(UserError, match="no such folder"):
        next(load_image_folder(tmp_path / "missing", ResizePolicy()))
    write_png(tmp_path / "a.png", 8, 8, 0)
    write_png(tmp_path / "b.png", 9, 8, 0)
    with pytest.raises(UserError, match="resize size"):
        list(load_image_folder(tmp_path, ResizePolicy()))
    (tmp_path / "c.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read image"):
        list(load_image_folder(tmp_path, ResizePolicy(size=8)))


def test_real_16_bit_images_are_scaled_like_training_images(tmp_path) -> None:
    """eval reads real images as training does: a 16-bit ramp becomes the 8-bit ramp, not a clipped white image."""
    import numpy as np
    from PIL import Image

    from distill_diffusion.eval.images import open_rgb

    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    out = np.asarray(open_rgb(tmp_path / "ramp.png"))
    assert out.shape == (16, 16, 3) and (out[..., 0].reshape(-1) == np.arange(256)).all()
