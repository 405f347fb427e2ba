"""An engine's checkpoint: its :class:`~.step_state.StepState` as :meth:`Engine.save` writes it and
:meth:`Engine.resume` restores it.

Models and optimizers through accelerate ``save_state`` (trainable weights only, :mod:`.checkpoints`), plus
EMA weights, the method's own tensors, LR schedules, counters and the run config, written atomically.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file

from distill_diffusion.config import RunConfig
from distill_diffusion.errors import UserError, require
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine import sharding
from distill_diffusion.trainers.engine.ema import load_ema, save_ema
from distill_diffusion.trainers.engine.step_state import StepState

logger = get_logger(__name__)
METHOD_STATE = "method_state.safetensors"


def save(step: StepState, run: RunConfig, output_dir: Path, label: str = "") -> Path:
    """Write ``step`` and ``run`` as ``output_dir/checkpoint-<global_step>`` (``-<label>``, the stage, in a run of
    several stages); see :meth:`Engine.save`."""
    acc = step.accelerator

    def write(folder: Path) -> None:
        acc.save_state(str(folder))
        for name, ema in step.emas.items():  # on every process: a sharded EMA is gathered to be written
            save_ema(ema, folder, name, write=acc.is_main_process)
        state = whole_method_state(step.method)
        if acc.is_main_process and state:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / METHOD_STATE))

    state = {
        "train": asdict(step.counters),
        "lr_schedulers": {n: _jsonable(s.state_dict()) for n, s in step.lr_schedulers.items()},
        "run": run.to_dict(),
        "num_processes": acc.num_processes,
    }
    return ckpt.save_checkpoint(output_dir, step.counters.global_step, write, state, run.train.checkpoints_total_limit,
                                is_main=acc.is_main_process, barrier=acc.wait_for_everyone, label=label)


def weights_to_check(step: StepState) -> list[torch.Tensor]:
    """Everything a checkpoint would hold that must be finite: trainable weights, EMA weights, the method's state."""
    # sharded weights (FSDP2): each process checks its own shard, and the processes agree on the verdict
    tensors = [sharding.local(p) for params in step.params.values() for p in params]
    tensors += [sharding.local(t) for ema in step.emas.values() for t in ema.shadow_params]
    return tensors + [sharding.local(t) for t in method_state(step.method).values()]


def resume(step: StepState, folder: Path) -> dict[str, Any]:
    """Load ``folder`` into ``step``'s models, optimizers, RNG, EMA and method (not its counters or LR schedules:
    they are in the JSON state it returns)."""
    acc = step.accelerator
    for warning in ckpt.verify_checkpoint(folder, acc.process_index):
        logger.warning(warning, main_process_only=False)
    saved = ckpt.read_state(folder)
    try:
        acc.load_state(str(folder))
        for name, ema in step.emas.items():
            load_ema(ema, folder, name)
        _load_method_state(step.method, folder)
    except UserError:
        raise
    except Exception as exc:  # a file that passed the size check but does not parse
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint {folder} could not be loaded ({exc.__class__.__name__}: {first}); "
                        f"delete {folder.name} to resume from the one before it, or start fresh") from None
    return saved


def method_state(method: Any) -> dict[str, torch.Tensor]:
    return method.state_dict() if hasattr(method, "state_dict") else {}


def whole_method_state(method: Any) -> dict[str, torch.Tensor]:
    """The method's own tensors (``MethodBase.state_dict``, e.g. a target network), sharded ones gathered whole
    (collective when any is sharded: every process calls it)."""
    return {k: sharding.full(v) for k, v in method_state(method).items()}


def _load_method_state(method: Any, folder: Path) -> None:
    """A method with state resumed from a checkpoint without it would silently restart that state: refuse."""
    path, current = folder / METHOD_STATE, method_state(method)
    if not current:
        return
    require(path.is_file(), f"checkpoint {folder} has no {METHOD_STATE} (the method's own state, e.g. a target "
                            f"network); resume from a checkpoint written with the same method options, or start fresh")
    loaded = load_file(str(path), device=str(next(iter(current.values())).device))
    # each process takes its shard of a sharded tensor (an FSDP2 student's LoRA target)
    method.load_state_dict({k: sharding.like(v, current[k]) if k in current else v for k, v in loaded.items()})


def _jsonable(value: Any) -> Any:
    """LR-scheduler state is numbers, lists and None (its lambdas are not part of ``state_dict``)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
