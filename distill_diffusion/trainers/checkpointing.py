"""Atomic training checkpoints: write to a temporary folder, then rename; find the latest; prune old ones.

Layout (diffusers convention): ``<output_dir>/checkpoint-<global_step>/``. A checkpoint folder only ever
appears complete, because it is renamed into place after everything in it is written; an interrupted
save leaves a ``.tmp-checkpoint-*`` folder that is never picked as ``latest`` and is cleaned up later.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill_diffusion.errors import UserError

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + PREFIX
STATE_FILE = "training_state.json"
_PATTERN = re.compile(rf"^{PREFIX}(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step number)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """Turn ``--resume_from_checkpoint`` (``latest``, a folder name or a path) into a checkpoint folder.

    ``latest`` with no checkpoint yet starts fresh (the diffusers scripts' behaviour); a named
    checkpoint that does not exist is a user error.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--resume_from_checkpoint {resume}: no complete checkpoint there; "
            f"pass 'latest' or a checkpoint-N folder from {output_dir}"
        )
    return path


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    write: Callable[[Path], None],
    state: dict[str, Any],
    total_limit: int | None = None,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a checkpoint atomically and prune the oldest beyond ``total_limit``.

    ``write(tmp_dir)`` runs on every process (accelerate ``save_state`` needs all ranks under FSDP and
    DeepSpeed); ``state`` is the small JSON training state, written last by the main process so its
    presence marks a complete folder even on file systems where rename is not atomic.
    """
    root = Path(output_dir)
    final = root / f"{PREFIX}{step}"
    tmp = root / f"{TMP_PREFIX}{step}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    write(tmp)
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # re-saving the same step
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(root, total_limit)
    barrier()
    return final


def prune(output_dir: Path, total_limit: int | None) -> None:
    """Remove leftovers of interrupted saves and the oldest checkpoints beyond ``total_limit``."""
    for leftover in output_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if total_limit is None:
        return
    for old in list_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The JSON training state of a complete checkpoint."""
    return json.loads((checkpoint / STATE_FILE).read_text())


def trainable_keys(model: Any) -> set[str]:
    """Names of the parameters the optimizer updates (as in ``model.state_dict()``, wrapper prefixes included)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def register_trainable_only_hooks(accelerator: Any) -> None:
    """Make ``save_state``/``load_state`` keep only trainable weights of each prepared model.

    Frozen weights are the teacher's and are reloaded from it when a run is rebuilt, so a LoRA
    checkpoint holds the adapter (megabytes), not the whole UNet (gigabytes on SD). FSDP and DeepSpeed
    save their models themselves (the hooks then see no plain models) and are left to do so.
    """
    from safetensors.torch import load_file

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, (model, state) in enumerate(zip(models, weights)):
            keep = trainable_keys(model)
            weights[i] = {k: v for k, v in state.items() if k in keep}

    def load_hook(models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            if not path.is_file():
                raise UserError(f"{input_dir} has no {path.name}; resume from a checkpoint this version wrote, or start fresh")
            state, keep = load_file(str(path)), trainable_keys(model)
            missing = sorted(keep - set(state))
            if missing:
                raise UserError(
                    f"{path} lacks {len(missing)} trainable weights (e.g. {missing[0]}); resume with the same method options"
                )
            model.load_state_dict({k: v for k, v in state.items() if k in keep}, strict=False)
        models.clear()  # loaded here; accelerate would otherwise expect every weight in the file

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
