"""The phase updates of a training step: accumulate, check, clip, step, and the rollback of a skipped step.

The engine owns per phase (docs/adding_a_method.md, "What the engine owns"): ``requires_grad`` on the phase's
weights only, zeroed gradients on every module, ``no_sync`` on every prepared module during accumulation, and
finite checks on the loss and on the gradients, agreed on by every process. A phase that fails raises
:class:`Skipped`; phases of the same step that already updated their weights are rolled back from a
:class:`Snapshot` (:func:`run_phases`), so a skipped step changes nothing. What they update is a
:class:`~distill_diffusion.trainers.engine.step_state.StepState`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DistributedType

from distill_diffusion.trainers.engine import sharding
from distill_diffusion.trainers.engine.optim import PhaseOptim
from distill_diffusion.trainers.engine.step_state import StepState
from distill_diffusion.trainers.methods.base import LossOutput, Phase, StepContext


class Skipped(Exception):
    """A phase's optimizer step did not happen: non-finite loss or gradients, or a GradScaler overflow."""

    def __init__(self, overflow: bool):
        self.overflow = overflow


@dataclass
class Snapshot:
    """A phase's weights and optimizer state before its step, to undo it when a later phase of the step fails."""

    params: list[torch.Tensor]
    optimizer_state: dict[str, Any]

    @classmethod
    def take(cls, params: list[torch.nn.Parameter], optimizer: Any) -> Snapshot:
        return cls([p.detach().clone() for p in params], clone_optimizer_state(optimizer.state_dict()))

    def restore(self, params: list[torch.nn.Parameter], optimizer: Any) -> None:
        with torch.no_grad():  # shard by shard under FSDP2 (DTensor has no _foreach_copy_)
            torch._foreach_copy_([sharding.local(p.data) for p in params], [sharding.local(t) for t in self.params])
        optimizer.load_state_dict(self.optimizer_state)


def clone_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer's ``state_dict()`` whose tensors are cloned one by one: ``copy.deepcopy`` gives the same
    result through Python's generic machinery, about 40 µs a tensor (50 ms a step for a LoRA's thousand Adam tensors)."""
    per_param = {k: {n: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for n, v in s.items()}
                 for k, s in state["state"].items()}
    return {**{k: copy.deepcopy(v) for k, v in state.items() if k != "state"}, "state": per_param}


def all_agree(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True on every process only if it is true on every process (a skipped all-reduce would hang DDP)."""
    as_tensor = torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device).reshape(1)
    return bool(accelerator.gather(as_tensor).min().item() > 0)


def finite_everywhere(accelerator: Accelerator, value: torch.Tensor) -> bool:
    return all_agree(accelerator, torch.isfinite(value.detach()).all())


@contextmanager
def no_sync_all(accelerator: Accelerator, modules: list[torch.nn.Module], active: bool) -> Iterator[None]:
    """``no_sync`` on every prepared module (not only the phase's) while gradients accumulate."""
    with ExitStack() as stack:
        if active:
            for module in modules:
                stack.enter_context(accelerator.no_sync(module))
        yield


def accumulate(step: StepState, phase: Phase, micro: list[dict[str, Any]], ctx: StepContext) -> dict[str, float]:
    """Forward and backward over the micro-batches; raises :class:`Skipped` on a non-finite loss."""
    acc, logs = step.accelerator, {}
    for i, batch in enumerate(micro):
        ctx.micro_batch = i
        with no_sync_all(acc, step.prepared, active=i < len(micro) - 1):
            with acc.autocast():
                out: LossOutput = step.method.compute_loss(phase.name, batch, ctx)
            loss = out.loss.float() / len(micro)
            if not finite_everywhere(acc, loss):
                raise Skipped(overflow=False)
            acc.backward(loss)
        for key, value in {f"{phase.name}/loss": out.loss.detach().item(), **out.logs}.items():
            logs[key] = logs.get(key, 0.0) + float(value) / len(micro)
    return logs


def grad_norm(accelerator: Accelerator, params: list[torch.nn.Parameter], optimizer: Any, max_norm: float) -> torch.Tensor:
    """The total gradient norm before clipping (clipped to ``max_norm`` when > 0); inf/nan if any gradient is."""
    limit = max_norm if max_norm > 0 else math.inf
    if accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        # unscale (fp16; this phase's optimizer only: a second unscale_ before update() raises) then torch's
        # clip, 2-3× cheaper than accelerate's DTensor-aware path on small models
        accelerator.unscale_gradients(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, limit) if limit < math.inf else total_norm(params)
    elif sharding.is_fsdp2(accelerator):
        # sharded gradients: this phase's optimizer only unscales (accelerate's clip_grad_norm_ unscales all, and
        # compares our list with each model's parameters element by element, which fails on unsharded ones)
        accelerator.unscale_gradients(optimizer)
        norm = sharding.grad_norm(params, limit)
    else:
        # FSDP1 and DeepSpeed: accelerate knows how to reduce sharded gradients (DeepSpeed may hide the norm)
        norm = accelerator.clip_grad_norm_(params, limit)
    device = params[0].device if params else accelerator.device
    return norm.detach().float() if isinstance(norm, torch.Tensor) else torch.tensor(0.0 if norm is None else float(norm), device=device)


def total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over all gradients without touching them (``clip_grad_norm_`` would rescale by 1.0)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


def run_phases(step: StepState, runs: list[tuple[Phase, int]], micro: list[dict[str, Any]],
               next_micro: Callable[[], list[dict[str, Any]]], ctx: StepContext) -> dict[str, float]:
    """Every ``(phase, repeat)`` of one training step, the first repeat on ``micro`` and each further one on
    ``next_micro()``; their logs.

    Raises :class:`Skipped` when any update fails, after restoring the phases that had already stepped and
    dropping every gradient: the step changes no weight and no optimizer state.
    """
    undo: list[tuple[Phase, Snapshot]] = []
    logs: dict[str, float] = {}
    try:
        for i, (phase, repeat) in enumerate(runs):
            ctx.repeat = repeat
            last = i == len(runs) - 1
            logs.update(run_phase(step, phase, micro if repeat == 0 else next_micro(), ctx, None if last else undo))
    except Skipped:
        roll_back(step, undo)
        raise
    return logs


def roll_back(step: StepState, undo: list[tuple[Phase, Snapshot]]) -> None:
    """Restore each snapshot's phase (the latest first) and drop every gradient."""
    for phase, snapshot in reversed(undo):
        snapshot.restore(step.params[phase.name], step.optimizers[phase.name])
    step.zero_grad()


def run_phase(step: StepState, phase: Phase, micro: list[dict[str, Any]], ctx: StepContext,
              undo: list[tuple[Phase, Snapshot]] | None) -> dict[str, float]:
    """Update ``phase`` once on ``micro``; appends a :class:`Snapshot` to ``undo`` (when given) before stepping.

    Raises :class:`Skipped` (nothing of this phase changed) on a non-finite loss or gradient, or when the fp16
    GradScaler skipped the update (it still ran, so the scaler lowered its scale).
    """
    acc, optimizer, params = step.accelerator, step.optimizers[phase.name], step.params[phase.name]
    settings: PhaseOptim = step.settings[phase.name]
    with only_trainable(step, phase):
        step.zero_grad()
        ctx.modules = step.modules_for(phase)
        logs = accumulate(step, phase, micro, ctx)
        if sharding.is_fsdp2(acc):
            sharding.reshard(step.prepared)  # the step must not leave stale gathered weights for the next forward
        norm = grad_norm(acc, params, optimizer, settings.max_grad_norm)
    finite, scaled = finite_everywhere(acc, norm), acc.scaler is not None
    if not (finite or scaled):
        raise Skipped(overflow=False)
    if undo is not None:
        undo.append((phase, Snapshot.take(params, optimizer)))
    optimizer.step()  # with a GradScaler it runs even on overflow: scaler.step skips, update() lowers the scale
    if not finite or (scaled and optimizer.step_was_skipped):
        undo and undo.pop()
        raise Skipped(overflow=scaled)
    if settings.max_grad_norm > 0:
        logs[f"{phase.name}/grad_norm"] = float(norm)
    return logs


@contextmanager
def only_trainable(step: StepState, phase: Phase) -> Iterator[None]:
    """``requires_grad`` on this phase's weights only, so its backward leaves no gradient on another phase's."""
    mine = {id(p) for p in step.params[phase.name]}
    others = {id(p): p for params in step.params.values() for p in params if id(p) not in mine}.values()
    for p in others:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in others:
            p.requires_grad_(True)
