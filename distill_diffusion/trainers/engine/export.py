"""Atomic export of a method's artefact into the run's output folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

#: Files that make a folder loadable; moved in last so a half-moved export is never loadable.
_LAST = ("model_index.json", "pytorch_lora_weights.safetensors")


def atomic_export(export: Callable[[Path], None], output_dir: Path) -> Path:
    """Run ``export(tmp)`` into ``output_dir/.tmp-export``, then move each entry into ``output_dir``.

    An interrupted export leaves only the temporary folder (removed on the next run), never a folder
    that diffusers would load half-written.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    export(tmp)
    entries = sorted(tmp.iterdir(), key=lambda p: p.name in _LAST)
    for entry in entries:
        dest = output_dir / entry.name
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        os.replace(entry, dest)
    tmp.rmdir()
    return output_dir
