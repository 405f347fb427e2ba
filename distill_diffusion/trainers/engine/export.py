"""Atomic export of a method's artefact into the run's output folder, and its upload to the Hub (``--push_to_hub``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distill_diffusion.trainers.engine import checkpoints as ckpt

if TYPE_CHECKING:
    from distill_diffusion.config import RunConfig

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


def run_entries(run: RunConfig, stage_folders: Sequence[str] = ()) -> list[str]:
    """Globs of the top-level entries of ``output_dir`` that are the run's own, not its export: checkpoints (also
    half-written or set aside), hidden temporary folders, ``config.yaml``, validation images, tracker logs, a latent
    cache or latents folder inside it, and the exports of single stages (``stage_folders``)."""
    out = Path(run.train.output_dir)
    inside = [out / run.train.logging_dir, out / "latent_cache", *(Path(p) for p in (run.data.cache_dir, run.data.latents_dir) if p)]
    tops = [_top_entry(out, path) for path in inside]
    return [f"{ckpt.PREFIX}*", f"{ckpt.DIVERGED_PREFIX}*", ".*", "config.yaml", "validation",
            *dict.fromkeys(t for t in tops if t), *stage_folders]


def _top_entry(root: Path, path: Path) -> str | None:
    """The name of the entry of ``root`` that holds ``path``; None when ``path`` is not below ``root``."""
    try:
        parts = path.expanduser().resolve().relative_to(root.expanduser().resolve()).parts
    except ValueError:
        return None
    return parts[0] if parts else None


def push_to_hub(run: RunConfig, stage_folders: Sequence[str] = ()) -> str:
    """Upload the export in ``output_dir`` (model files and model card, not :func:`run_entries`) to the Hub repo of
    ``--hub_model_id``; returns its URL. Called on the main process after :func:`atomic_export`."""
    from distill_diffusion.hub import hub_repo_id, push_folder

    cfg = run.train
    return push_folder(Path(cfg.output_dir), cfg, hub_repo_id(cfg, cfg.output_dir), run_entries(run, stage_folders))
