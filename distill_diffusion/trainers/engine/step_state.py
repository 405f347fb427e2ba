"""What a training step updates, in one typed place: weights, optimizers, LR schedules, EMA and the counters.

:class:`~distill_diffusion.trainers.engine.loop.Engine` builds one :class:`StepState` and hands it to the
phase updates (:mod:`.phase_step`, which roll back a skipped step through it) and to the checkpoint
(:mod:`.persist`, which saves and restores it); docs/adding_a_method.md, "What the engine owns".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch import nn

from distill_diffusion.trainers.engine.optim import PhaseOptim
from distill_diffusion.trainers.methods.base import DistillationMethod, Phase


@dataclass
class TrainState:
    """Counters saved with every checkpoint (JSON)."""

    global_step: int = 0
    batches_seen: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    stage: int = 0
    #: fp16 steps the GradScaler skipped (gradient overflow): normal while it finds its scale, not divergence.
    overflow_total: int = 0
    overflow_in_a_row: int = 0


@dataclass
class StepState:
    """The run's trainable state, per phase name, and the objects a phase update needs to change it.

    A step that is skipped (non-finite loss or gradients, an fp16 overflow) leaves all of it as it was: the
    phases that had stepped are restored from their snapshots (:func:`.phase_step.roll_back`).
    """

    accelerator: Accelerator
    method: DistillationMethod
    #: every model as the method built it (before ``accelerator.prepare``)
    unwrapped: dict[str, nn.Module]
    #: the prepared (wrapped) modules: ``no_sync`` during accumulation, resharded after an FSDP2 backward
    prepared: list[nn.Module]
    #: each phase's trainable parameters (the sharded ones under FSDP2)
    params: dict[str, list[nn.Parameter]]
    optimizers: dict[str, Any]
    settings: dict[str, PhaseOptim]
    lr_schedulers: dict[str, Any] = field(default_factory=dict)
    emas: dict[str, EMAModel] = field(default_factory=dict)
    counters: TrainState = field(default_factory=TrainState)

    def modules_for(self, phase: Phase) -> dict[str, Any]:
        """Every model, wrapped where ``phase`` updates it and unwrapped where it is only used."""
        models = self.method.models
        return {n: models[n] if n in phase.modules else self.unwrapped[n] for n in models}

    def zero_grad(self) -> None:
        """Drop the gradients of every phase's weights."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
