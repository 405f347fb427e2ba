"""Image grids for looking rather than reading: prompts as rows × step counts (or pipelines) as columns.

Built with PIL from folders written by :func:`distill_diffusion.eval.generate.generate_to_folder`; the same
file name in each folder is the same prompt and seed, so a row compares like with like.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from distill_diffusion.errors import require
from distill_diffusion.eval.generate import read_manifest


def make_grid(
    columns: Sequence[tuple[str, str | Path]],
    path: str | Path,
    *,
    max_rows: int = 4,
    cell: int = 96,
    label_width: int = 160,
) -> Path:
    """Save a grid PNG: one column per ``(label, generated_folder)``, one row per image (first ``max_rows``).

    Images are scaled to ``cell`` pixels (nearest-neighbour when enlarging, so tiny toy images stay crisp);
    the row label is the prompt, the column header the label (e.g. ``"student 4 steps"``).
    """
    require(len(columns) > 0, "a grid needs at least one generated folder")
    manifests = [read_manifest(folder) for _, folder in columns]
    rows = min(max_rows, *(len(m) for m in manifests))
    header = 28
    font = ImageFont.load_default()
    grid = Image.new("RGB", (label_width + cell * len(columns), header + cell * rows), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, _) in enumerate(columns):
        draw.text((label_width + c * cell + 4, 8), str(label)[: cell // 6], fill="black", font=font)
    for r in range(rows):
        prompt = manifests[0][r]["prompt"]
        for k, line in enumerate(textwrap.wrap(prompt, width=max(label_width // 7, 8))[: cell // 12]):
            draw.text((4, header + r * cell + 4 + 12 * k), line, fill="black", font=font)
        for c, (_, folder) in enumerate(columns):
            with Image.open(Path(folder) / manifests[c][r]["file_name"]) as im:
                image = im.convert("RGB")
            resample = Image.Resampling.NEAREST if image.width < cell else Image.Resampling.LANCZOS
            grid.paste(image.resize((cell, cell), resample), (label_width + c * cell, header + r * cell))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
