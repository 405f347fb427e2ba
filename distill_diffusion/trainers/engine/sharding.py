"""What the engine does differently when accelerate shards the models (FSDP2, ``accelerate launch --use_fsdp``).

FSDP2 (torch ``fully_shard``) shards a module in place: each parameter becomes a new ``nn.Parameter`` holding a
``DTensor``, of which a process keeps one shard (Zhao et al., "PyTorch FSDP", arXiv:2304.11277). So parameters listed
before wrapping are stale after it, a tensor's ``.cpu()`` is still a shard, and writing a full weight needs every
process to gather it. accelerate's FSDP2 ``prepare`` takes ONE model per call, with its optimizers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator, DistributedType

from distill_diffusion.errors import require
from distill_diffusion.models.sharded import full, is_dtensor, like, local, reshard  # noqa: F401 (the engine's names)
from distill_diffusion.trainers.methods.base import Phase

#: The command that shards: documented in docs/training.md, named by the errors below.
FSDP_COMMAND = "accelerate launch --use_fsdp --fsdp_version 2 --num_processes N -m distill_diffusion.cli train ..."


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def is_fsdp2(accelerator: Accelerator) -> bool:
    """Sharded by FSDP2 (accelerate before FSDP2 support has no ``is_fsdp2``: never)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def check_sharding(accelerator: Accelerator, env: dict[str, str] | None = None) -> None:
    """Refuse an FSDP launch the engine would not run as asked: accelerate drops ``--use_fsdp`` on CPU processes (DDP
    runs instead, silently), and the engine follows FSDP2's sharded parameters, not FSDP1's flat ones."""
    env = os.environ if env is None else env
    asked = env.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    require(not asked or is_sharded(accelerator) or accelerator.num_processes == 1,
            f"accelerate launch --use_fsdp was asked but accelerate runs {accelerator.distributed_type.value} here (it shards "
            "on GPUs only); on CPUs drop --use_fsdp: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...")
    if is_sharded(accelerator):
        require(is_fsdp2(accelerator), f"--fsdp_version 1 is not supported; launch FSDP2: {FSDP_COMMAND}")


def prepare(accelerator: Accelerator, models: dict[str, Any], phases: list[Phase], optimizers: dict[str, Any],
            dataloader: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``accelerator.prepare`` of the phases' modules, their optimizers and the data loader: one call, or under FSDP2 one
    call per module with the optimizers of the phases that update it (accelerate maps each optimizer to the module's new
    sharded parameters there, and pairs the i-th optimizer with the i-th model when it saves them)."""
    names = sorted({m for p in phases for m in p.modules})
    if not is_fsdp2(accelerator):
        find_unused_parameters_if_shared(accelerator, phases)
        out = accelerator.prepare(*[models[n] for n in names], *optimizers.values(), dataloader)
        return dict(zip(names, out[: len(names)])), dict(zip(optimizers, out[len(names) : -1])), out[-1]
    modules, prepared = {}, {}
    plugin = accelerator.state.fsdp_plugin
    asked = plugin.transformer_cls_names_to_wrap
    for name in names:
        # accelerate keeps the first model's layer classes for the next (a UNet after discriminator heads would be
        # one unit, silently; heads after a UNet fail on classes they lack): each model wraps its own
        plugin.transformer_cls_names_to_wrap = _classes_in(models[name], asked)
        mine = [p.name for p in phases if name in p.modules]
        crowded = [p.name for p in phases if name in p.modules and len(p.modules) > 1]
        require(not crowded, f"phase {', '.join(crowded)} updates several modules, and accelerate's FSDP2 prepares one "
                "model per call with its optimizers: drop --use_fsdp for this method")
        out = accelerator.prepare(models[name], *[optimizers[n] for n in mine])
        modules[name] = out[0]
        prepared.update(zip(mine, out[1:]))
    plugin.transformer_cls_names_to_wrap = asked
    return modules, {n: prepared[n] for n in optimizers}, accelerator.prepare(dataloader)


def find_unused_parameters_if_shared(accelerator: Accelerator, phases: list[Phase]) -> None:
    """DDP with ``find_unused_parameters`` when phases share a module (DMD2's one UNet: each phase trains its own LoRA
    adapter on it). DDP's reducer waits for a gradient of every parameter it wrapped in every backward; a phase that
    leaves the other phase's weights without one would hang the next step (torch's "Expected to have finished
    reduction" error), so DDP must look for the unused ones after each forward, at the cost of a graph walk."""
    from accelerate.utils import DistributedDataParallelKwargs

    modules = [m for p in phases for m in p.modules]
    if len(modules) == len(set(modules)):
        return
    handler = accelerator.ddp_handler or DistributedDataParallelKwargs()
    handler.find_unused_parameters = True
    accelerator.ddp_handler = handler


def _classes_in(model: Any, names: list[str] | None) -> list[str] | None:
    """The layer class names of ``names`` that ``model`` has (None, accelerate's default: the model's own
    ``_no_split_modules``, stays None)."""
    if names is None:
        return None
    present = {type(m).__name__ for m in model.modules()}
    return [n for n in names if n in present]


def grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The whole L2 norm of sharded gradients (every process holds shards of them: collective), clipped to ``max_norm``
    when finite."""
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = full(get_total_norm(grads))
    if math.isfinite(max_norm):
        clip_grads_with_norm_(params, max_norm, norm)
    return norm


class PlainCopy:
    """An unsharded copy of the method on the main process, for what reads whole weights there: export and validation.

    Built once, the first time it is needed, as a resume builds a method (from the teacher, by ``build``), then loaded
    with the sharded modules' current trainable weights (gathered) and the method's own state at every use. Sharded
    modules cannot serve: a diffusers ``save_pretrained`` of one writes ``FSDP``-prefixed class names and sharded
    state dicts, and a forward on one process waits for the others to send their shards.
    """

    def __init__(self, build: Callable[[], Any]):
        self.build, self.method = build, None

    def update(self, accelerator: Accelerator, method: Any) -> Any | None:
        """The copy with ``method``'s weights (every process must call this: it gathers); None off the main process."""
        weights = {name: {key: full(p.detach()).cpu() for key, p in module.named_parameters() if p.requires_grad}
                   for name, module in method.models.items()}
        state = {k: full(v) for k, v in method.state_dict().items()} if hasattr(method, "state_dict") else {}
        if not accelerator.is_main_process:
            return None
        if self.method is None:
            # a method's construction draws random numbers (a LoRA's A, new heads): the run's streams must not move
            device = accelerator.device
            accelerators = [] if device.type == "cpu" else [device]  # the CPU stream is always forked
            with torch.random.fork_rng(devices=accelerators, device_type=device.type if accelerators else "cuda"):
                self.method = self.build()
        for name, tensors in weights.items():
            unexpected = self.method.models[name].load_state_dict(tensors, strict=False).unexpected_keys
            require(not unexpected, f"the plain copy of module {name!r} lacks {unexpected[:3]}; it must be built like the run's")
        if state:
            self.method.load_state_dict(state)
        return self.method
