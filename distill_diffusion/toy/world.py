"""The toy world's procedural captioned dataset: coloured shapes whose captions leave position/size/rotation out.

Each image is one shape (circle, square, triangle, cross, ring, star) in one of eight colours on one of
three backgrounds, at a random size (radius 28-45% of the side), position and rotation. Captions name the colour and the shape and,
half of the time, the background -- never position, size or rotation. So one prompt has many images and
a one-step (mean) prediction is a blur, as with real Stable Diffusion (docs/toy_world.md).

Resolution: 32x32 RGB by default. The tiny VAE (``distill_diffusion.toy.tiny``) downsamples by 4 to 8x8x4
latents (those of an earlier 32^2 glyph world where a 1M-parameter UNet teacher and its LCM-LoRA worked: 4 LCM
steps came within 1.1x of the teacher's 50-step Frechet distance): a shape of 9-14 px radius spans 4-7 latent
pixels, enough for an 8 -> 4 -> 2 UNet to resolve its outline, while 4x4 latents (a x8 VAE at 32^2) would leave one
latent pixel per shape part.

Everything is deterministic from ``seed``: example ``i`` draws from ``numpy.random.default_rng([seed, i])``,
so the first ``n`` examples of a larger dataset are the same images, and the files are byte-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from distill_diffusion.errors import require

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (125, 125, 125),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
#: Words every toy caption is built from (the toy tokenizer gives each one a single token).
VOCABULARY = ("a", "on", "background", *COLOURS, *BACKGROUNDS, *SHAPES)

_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges without a font or a renderer
#: Shape radius range, as a fraction of the image side. toy-v2 drew 0.2-0.42; its smallest stars and crosses
#: (radius 6 px) lost their shape in the x4 VAE: 77% of reconstructions kept it; 93% at 0.28-0.45 with STAR_INNER 0.4.
RADIUS = (0.28, 0.45)
#: A star's inner radius over its outer one (toy-v2: 0.45; deeper points read as a star, not a pentagon, at 32 px).
STAR_INNER = 0.4
_ROTATING = ("square", "triangle", "cross", "star")  # circle and ring look the same at any angle


@dataclass(frozen=True)
class ToyExample:
    """The attributes of one toy image; only colour, shape and (sometimes) background reach the caption."""

    shape: str
    colour: str
    background: str
    radius: float  # fraction of the image side
    cx: float  # centre, fraction of the image side
    cy: float
    angle: float  # degrees
    mention_background: bool

    @property
    def caption(self) -> str:
        text = f"a {self.colour} {self.shape}"
        return f"{text} on a {self.background} background" if self.mention_background else text


def sample_example(rng: np.random.Generator) -> ToyExample:
    """Draw one example's attributes (shape colour never equals the background colour)."""
    background = str(rng.choice(list(BACKGROUNDS)))
    colour = str(rng.choice([c for c in COLOURS if c != background]))
    radius = float(rng.uniform(*RADIUS))
    cx, cy = (float(v) for v in rng.uniform(radius, 1.0 - radius, size=2))
    return ToyExample(
        shape=str(rng.choice(SHAPES)),
        colour=colour,
        background=background,
        radius=radius,
        cx=cx,
        cy=cy,
        angle=float(rng.uniform(0.0, 360.0)),
        mention_background=bool(rng.random() < 0.5),
    )


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps with the given radii, rotated by ``angle`` degrees."""
    n = len(radii)
    start = math.radians(angle) - math.pi / 2
    return [
        (cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


def _cross(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """A plus sign of arm half-width r/3 as a 12-vertex polygon, rotated about its centre."""
    w = r / 3
    pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render(example: ToyExample, resolution: int = 32) -> Image.Image:
    """Draw ``example`` as an RGB image of ``resolution`` x ``resolution`` pixels."""
    return render_canvas(example, resolution, resolution)


def render_canvas(example: ToyExample, height: int, width: int) -> Image.Image:
    """Draw ``example`` on a ``height`` x ``width`` canvas: the radius is a fraction of the shorter side, the centre a
    fraction of each side, so the shape stays whole on any canvas (a square canvas is :func:`render`)."""
    h, w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    image = Image.new("RGB", (w, h), BACKGROUNDS[example.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[example.colour]
    cx, cy, r = example.cx * w, example.cy * h, example.radius * min(h, w)
    if example.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        if example.shape == "ring":
            inner = 0.55 * r
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=BACKGROUNDS[example.background])
    elif example.shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, example.angle), fill=fill)
    elif example.shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, example.angle), fill=fill)
    elif example.shape == "cross":
        draw.polygon(_cross(cx, cy, r, example.angle), fill=fill)
    else:  # star: five points
        draw.polygon(_polygon(cx, cy, [r, STAR_INNER * r] * 5, example.angle), fill=fill)
    return image.resize((width, height), Image.Resampling.BOX)


def iter_examples(n: int, seed: int = 0) -> Iterator[ToyExample]:
    """The first ``n`` examples of the toy world with ``seed`` (prefix-stable in ``n``)."""
    for i in range(n):
        yield sample_example(np.random.default_rng([seed, i]))


def make_toy_dataset(out_dir: str | Path, num_images: int = 2048, resolution: int = 32, seed: int = 0) -> Path:
    """Write ``num_images`` toy images as an imagefolder: ``out_dir/*.png`` and ``metadata.jsonl``.

    Each metadata line is ``{"file_name": "000000.png", "text": "<caption>"}`` (what HF ``imagefolder``
    and ``distill_diffusion.data`` read). Returns ``out_dir``.
    """
    require(num_images > 0, f"num_images={num_images} must be > 0; ask for at least one image")
    require(resolution >= 16 and resolution % 8 == 0, f"resolution={resolution} must be a multiple of 8, at least 16")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, example in enumerate(iter_examples(num_images, seed)):
        name = f"{i:06d}.png"
        render(example, resolution).save(out / name)
        lines.append(json.dumps({"file_name": name, "text": example.caption}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` captions drawn like the dataset's (a separate stream from the images of the same seed)."""
    return [sample_example(np.random.default_rng([seed, 1_000_003, i])).caption for i in range(n)]


def toy_images(n: int, resolution: int = 32, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``n`` (image, caption) pairs in memory, equal to the first ``n`` of ``make_toy_dataset(seed=seed)``."""
    return [(render(ex, resolution), ex.caption) for ex in iter_examples(n, seed)]
