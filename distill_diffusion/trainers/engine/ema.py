"""EMA of the trainable weights (diffusers ``EMAModel``), saved as safetensors + JSON, never pickled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

from distill_diffusion.errors import require
from distill_diffusion.trainers.engine import sharding

EMA_WEIGHTS = "ema_{name}.safetensors"
EMA_META = "ema_{name}.json"


def save_ema(ema: EMAModel, folder: Path, name: str, write: bool = True) -> None:
    """Write shadow weights as safetensors and the scalars (decay, step, ...) as JSON.

    Shadows of sharded weights (FSDP2) are sharded too: every process must call this to gather them, and only the one
    with ``write`` writes the files."""
    if not (write or any(sharding.is_dtensor(t) for t in ema.shadow_params)):
        return
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    tensors = {f"shadow.{i}": sharding.full(t.detach()).contiguous().cpu() for i, t in enumerate(shadow)}
    if not write:
        return
    save_file(tensors, str(folder / EMA_WEIGHTS.format(name=name)))
    (folder / EMA_META.format(name=name)).write_text(json.dumps(state))


def load_ema(ema: EMAModel, folder: Path, name: str) -> None:
    """Inverse of :func:`save_ema`, onto the device the EMA lives on now (its shadow weights sit beside the
    parameters they follow: loading them on the CPU would make the next ``ema.step`` mix CPU and CUDA tensors)."""
    device = ema.shadow_params[0].device if ema.shadow_params else torch.device("cpu")
    path = folder / EMA_WEIGHTS.format(name=name)
    require(path.is_file(), f"checkpoint {folder} has no {path.name}; resume with the same --use_ema setting it was written with")
    tensors = load_file(str(path), device=str(device))
    require(len(tensors) == len(ema.shadow_params), f"{path} holds {len(tensors)} EMA tensors, this run {len(ema.shadow_params)}; "
            "resume with the same method options")
    state = json.loads((folder / EMA_META.format(name=name)).read_text())
    # each process keeps its shard of a sharded weight's shadow (FSDP2): the file holds the whole of it
    state["shadow_params"] = [sharding.like(tensors[f"shadow.{i}"], t) for i, t in enumerate(ema.shadow_params)]
    ema.load_state_dict(state)


@contextmanager
def ema_weights(ema: EMAModel | None, parameters: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily swap the EMA weights into ``parameters`` (for validation and export)."""
    if ema is None:
        yield
        return
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)
