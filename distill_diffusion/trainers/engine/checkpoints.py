"""Atomic training checkpoints: write to a temporary folder, then rename; find the latest; prune old ones.

Layout (diffusers convention): ``<output_dir>/checkpoint-<global_step>/``; a run of several stages names the
stage too, ``checkpoint-<global_step>-<stage>/`` (e.g. ``checkpoint-1200-round-2-16-steps``). A checkpoint folder only ever
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

from distill_diffusion.errors import UserError, require

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + PREFIX
#: A checkpoint being replaced by a re-save of its step is renamed to this first, then removed.
OLD_PREFIX = ".old-" + PREFIX
#: A checkpoint whose weights made the run diverge is set aside under this name (never picked as latest).
DIVERGED_PREFIX = "diverged-" + PREFIX
STATE_FILE = "training_state.json"
#: accelerate's per-process RNG files: a resume without them is not exact, but it can go on.
RNG_FILE = re.compile(r"^random_states_\d+\.pkl$")
_PATTERN = re.compile(rf"^{PREFIX}(\d+)(?:-[A-Za-z0-9_.-]+)?$")


def checkpoint_name(step: int, label: str = "") -> str:
    """``checkpoint-<step>``, or ``checkpoint-<step>-<label>`` (the stage of a multi-stage run)."""
    require(not label or re.fullmatch(r"[A-Za-z0-9_.-]+", label), f"checkpoint label {label!r} may hold only letters, digits, _ . -")
    return f"{PREFIX}{step}-{label}" if label else f"{PREFIX}{step}"


def step_of(folder: Path) -> int | None:
    """The global step of a checkpoint folder's name (None when it is not one)."""
    match = _PATTERN.match(folder.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step number)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := step_of(p)) is not None]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """Turn ``--resume_from_checkpoint`` (``latest``, a folder name or a path) into a checkpoint folder.

    ``latest`` with no checkpoint yet starts fresh (the diffusers scripts' behaviour); a named
    checkpoint that does not exist is a user error.
    """
    if not resume:
        return None
    recover_interrupted_resave(Path(output_dir))
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


def recover_interrupted_resave(output_dir: Path) -> None:
    """A re-save killed between its two renames left ``.old-checkpoint-N`` and no ``checkpoint-N``: put it back."""
    if not output_dir.is_dir():
        return
    for old in output_dir.glob(f"{OLD_PREFIX}*"):
        final = output_dir / old.name.removeprefix(".old-")
        if not final.exists() and (old / STATE_FILE).is_file():
            os.replace(old, final)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    write: Callable[[Path], None],
    state: dict[str, Any],
    total_limit: int | None = None,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    label: str = "",
) -> Path:
    """Write a checkpoint atomically and prune the oldest beyond ``total_limit``.

    ``write(tmp_dir)`` runs on every process (accelerate ``save_state`` needs all ranks under FSDP and
    DeepSpeed); ``state`` is the small JSON training state, written last by the main process so its
    presence marks a complete folder even on file systems where rename is not atomic. ``label`` names the stage.
    """
    root = Path(output_dir)
    name = checkpoint_name(step, label)
    final, tmp = root / name, root / f".tmp-{name}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    write(tmp)
    barrier()
    if is_main:
        state = {**state, "files": file_sizes(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        old = root / f".old-{name}"
        if final.exists():
            # re-saving the same step: move the old folder aside in one rename, so a kill at any moment
            # leaves either the old complete checkpoint or the new one under the final name, never half of one
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        prune(root, total_limit)
    barrier()
    return final


def file_sizes(folder: Path) -> dict[str, int]:
    """Size of every file of a checkpoint (relative paths): the manifest :func:`verify_checkpoint` checks."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}


def verify_checkpoint(folder: Path, process_index: int = 0) -> list[str]:
    """Refuse a checkpoint with a missing, truncated or malformed file before anything is loaded from it.

    Returns warnings for what only makes the resume inexact: this process's RNG file (accelerate's
    ``random_states_<i>.pkl``) missing, as when the process count grew, or damaged. Checkpoints written
    before the size manifest existed are checked for their state file and this RNG file only.
    """
    state = read_state(folder)
    fix = f"delete {folder.name} to resume from the checkpoint before it, or start fresh"
    mine = f"random_states_{process_index}.pkl"
    for name, size in (state.get("files") or {}).items():
        have = (folder / name).stat().st_size if (folder / name).is_file() else None
        if have != size and not RNG_FILE.match(name):
            what = "is missing" if have is None else f"has {have} bytes, {size} were written"
            raise UserError(f"checkpoint {folder} is damaged: {name} {what}; {fix}")
    rng = folder / mine
    expected = (state.get("files") or {}).get(mine)
    if not rng.is_file() or (expected is not None and rng.stat().st_size != expected):
        return [f"{rng} is {'missing' if not rng.is_file() else 'truncated'}: process {process_index} restarts its random "
                "state from the seed, so this resume is not exact (noise and timesteps differ from an uninterrupted run)"]
    return []


def prune(output_dir: Path, total_limit: int | None) -> None:
    """Remove leftovers of interrupted saves and the oldest checkpoints beyond ``total_limit``."""
    for leftover in [*output_dir.glob(f"{TMP_PREFIX}*"), *output_dir.glob(f"{OLD_PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if total_limit is None:
        return
    for old in list_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The JSON training state of a complete checkpoint; unreadable or malformed is a :class:`UserError`."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc.__class__.__name__}); delete {checkpoint.name} to resume from the one before it") from None
    ok = isinstance(state, dict) and isinstance(state.get("train"), dict) and isinstance(state.get("lr_schedulers"), dict)
    require(ok, f"{path} is not a training state this version wrote; delete {checkpoint.name} to resume from the one before it")
    return state


def set_aside_diverged(output_dir: str | Path, step: int) -> Path | None:
    """Rename ``checkpoint-<step>[-<stage>]`` (weights whose losses were non-finite) so ``latest`` never picks it."""
    folder = next((p for p in list_checkpoints(output_dir) if step_of(p) == step), None)
    if folder is None:
        return None
    aside = folder.with_name("diverged-" + folder.name)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    return aside


def trainable_keys(model: Any) -> set[str]:
    """Names of the parameters the optimizer updates, as in the UNWRAPPED model's ``state_dict()``."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


#: Prefixes wrappers add to state-dict keys (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefix(key: str) -> str:
    """``module._orig_mod.conv_in.weight`` → ``conv_in.weight``: checkpoints do not depend on the process count."""
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def all_finite(tensors: Any) -> bool:
    """Every element finite and every tensor's norm representable: 1e30-sized weights (an exploded run)
    are finite element by element, but their fp32 norm overflows to inf."""
    tensors = [t.detach() for t in tensors if t.is_floating_point()]
    if not tensors:
        return True
    import torch

    norms = torch._foreach_norm([t.float() for t in tensors])
    return bool(torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms])).all())


def register_trainable_only_hooks(accelerator: Any) -> None:
    """Make ``save_state``/``load_state`` keep only trainable weights of each prepared model.

    Frozen weights are the teacher's and are reloaded from it when a run is rebuilt, so a LoRA
    checkpoint holds the adapter (megabytes), not the whole UNet (gigabytes on SD). Keys are those of the
    unwrapped model, so a checkpoint written by N processes (DDP) resumes on M. FSDP and DeepSpeed save
    their models themselves (the hooks then see no plain models) and are left to do so.
    """
    from safetensors.torch import load_file

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, (model, state) in enumerate(zip(models, weights)):
            keep = trainable_keys(accelerator.unwrap_model(model))
            weights[i] = {k: v for k, v in ((strip_wrapper_prefix(k), v) for k, v in state.items()) if k in keep}

    def load_hook(models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            if not path.is_file():
                raise UserError(f"{input_dir} has no {path.name}; resume from a checkpoint this version wrote, or start fresh")
            model = accelerator.unwrap_model(model)
            state, keep = {strip_wrapper_prefix(k): v for k, v in load_file(str(path)).items()}, trainable_keys(model)
            missing = sorted(keep - set(state))
            if missing:
                raise UserError(
                    f"{path} lacks {len(missing)} trainable weights (e.g. {missing[0]}); resume with the same method options"
                )
            state = {k: v for k, v in state.items() if k in keep}
            require(all_finite(state.values()), f"{path} holds non-finite weights; delete {Path(input_dir).name} and resume from an earlier checkpoint")
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here; accelerate would otherwise expect every weight in the file

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
