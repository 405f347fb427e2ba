"""The toy SDXL teacher's training data: the toy world's examples on canvases of varied size and aspect ratio.

SDXL's micro-conditioning (Podell et al., arXiv:2307.01952, §2.2) tells the UNet each training image's original size
and where the training crop was cut from it, so that at inference it can ask for a native-resolution, uncropped image
(diffusers' pipelines pass original = target size, crop (0, 0)). On the square 32² toy images every crop would be
(0, 0) and every size (32, 32), leaving nothing to condition on. Here each example of :func:`toy.world.iter_examples`
(the same shapes, colours and captions as the SD world's) is drawn on a canvas from :data:`VIEWS`:

- half on the native 32x32 canvas: exactly the SD world's images, and the conditioning used at inference;
- small canvases (24²), upscaled to 32 by the data pipeline: softer edges, which the size condition explains;
- large canvases (48²), downscaled to 32: as sharp as native;
- non-square canvases with a 32-pixel shorter side: the data pipeline's random 32x32 crop may cut the shape, which the
  crop condition explains (the failure crop conditioning removes: objects cut off in generated images).

The data pipeline (``data.center_crop: false``, ``data.micro_conditioning: data``) records the original size and the
crop offset per image as diffusers' ``train_text_to_image_sdxl.py`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distill_diffusion.errors import require
from distill_diffusion.toy.world import iter_examples, render_canvas

#: ((height, width), weight) of each canvas; weights out of 16 (half native, a quarter non-square).
VIEWS: tuple[tuple[tuple[int, int], int], ...] = (
    ((32, 32), 8),
    ((24, 24), 2),
    ((48, 48), 2),
    ((32, 40), 1),
    ((40, 32), 1),
    ((32, 48), 1),
    ((48, 32), 1),
)
#: Seed stream of the views, apart from the examples' own ``[seed, i]`` stream (so the examples are the SD world's).
_VIEW_STREAM = 2_000_003


def sample_view(seed: int, index: int) -> tuple[int, int]:
    """The (height, width) canvas of example ``index``, drawn from :data:`VIEWS` by weight."""
    weights = np.array([w for _, w in VIEWS], dtype=np.float64)
    choice = np.random.default_rng([seed, _VIEW_STREAM, index]).choice(len(VIEWS), p=weights / weights.sum())
    return VIEWS[int(choice)][0]


def make_toy_xl_dataset(out_dir: str | Path, num_images: int = 8192, seed: int = 0) -> Path:
    """Write ``num_images`` toy examples on their :func:`sample_view` canvases as an imagefolder (``*.png`` and
    ``metadata.jsonl``, as :func:`toy.world.make_toy_dataset`); returns ``out_dir``. Deterministic for a seed."""
    require(num_images > 0, f"num_images={num_images} must be > 0; ask for at least one image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, example in enumerate(iter_examples(num_images, seed)):
        name = f"{i:06d}.png"
        render_canvas(example, *sample_view(seed, i)).save(out / name)
        lines.append(json.dumps({"file_name": name, "text": example.caption}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out
