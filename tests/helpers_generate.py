"""Test helper: run ``generate`` in-process from an export's card and read back its first image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from distill_diffusion.cli import main


def generate(model: Path, out: Path, *extra: str) -> dict:
    """``generate`` with what the card records (no sampler, steps or guidance given); the manifest's first entry."""
    assert main(["generate", "--model", str(model), *extra, "--prompt", "a red circle", "--output_dir", str(out),
                 "--device", "cpu"]) == 0
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    image = np.asarray(Image.open(out / entry["file_name"]))
    assert image.shape == (32, 32, 3) and image.std() > 0
    return entry
