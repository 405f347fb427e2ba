"""The method contract: what a distillation method gives the engine, and what it gets back.

A method is an algorithm on already-built objects (DESIGN.md): it receives the teacher's components and
a batch and returns losses. It never sees the command line, the Accelerator, optimizers or file paths
other than the export folder. The engine owns the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class Phase:
    """One optimisation phase per training step (e.g. ``student``; ``generator`` and ``discriminator``).

    ``module`` names the entry of ``method.models`` whose trainable parameters this phase updates.
    ``lr_scale`` multiplies ``train.learning_rate``; ``repeats`` runs the phase several times a step
    (e.g. more discriminator than generator updates).
    """

    name: str
    module: str
    lr_scale: float = 1.0
    repeats: int = 1
    #: Keep an EMA of this phase's parameters when ``train.use_ema`` is on (off for discriminators).
    ema: bool = True


@dataclass
class LossOutput:
    """The scalar to minimise (fp32) and detached numbers to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class DistillationMethod(Protocol):
    """What every method in :mod:`distill_diffusion.trainers` implements.

    ``models`` maps names to the trainable modules. The engine wraps each with accelerate (DDP/FSDP)
    and writes the wrapped module back into the dict, so methods call ``self.models[name](...)`` for
    the forward pass and keep their own reference to the unwrapped module for attribute access.
    """

    paper: ClassVar[str]
    models: dict[str, nn.Module]

    def phases(self) -> list[Phase]: ...

    def trainable_parameters(self, phase: Phase) -> list[nn.Parameter]: ...

    def compute_loss(self, phase: str, batch: dict[str, Any], step: int) -> LossOutput: ...

    def on_step_end(self, step: int) -> None: ...

    def on_stage_end(self, stage: int) -> bool: ...

    def export(self, output_dir: Path) -> None: ...

    def validation_pipeline(self) -> Any | None: ...

    def validation_call_kwargs(self) -> dict[str, Any]: ...


class MethodBase:
    """Defaults for the optional hooks, so a method writes only what it needs."""

    paper: ClassVar[str] = ""
    #: Method options that shape the trainable weights or the method's state (e.g. a LoRA rank): a checkpoint
    #: resumes only under the same values, checked before any model loads.
    resume_fields: ClassVar[tuple[str, ...]] = ()
    models: dict[str, nn.Module]

    @classmethod
    def check_before_loading(cls, run: Any, teacher: Any | None) -> None:
        """Refuse options that cannot work with this teacher, from configs alone, before any weights load.

        ``run`` is the :class:`~distill_diffusion.config.RunConfig` (the method's options are
        ``run.method_config``); ``teacher`` the :class:`~distill_diffusion.models.loading.TeacherConfigs`, or
        None where they cannot be read without loading. Raise :class:`UserError`; the default checks nothing.
        """
        return None

    def trainable_parameters(self, phase: Phase) -> list[nn.Parameter]:
        return [p for p in self.models[phase.module].parameters() if p.requires_grad]

    def on_step_end(self, step: int) -> None:
        return None

    def on_stage_end(self, stage: int) -> bool:
        return False

    def validation_pipeline(self) -> Any | None:
        return None

    def validation_call_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for each validation pipeline call (e.g. the method's guidance scale)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors the method holds outside ``models`` that must survive resume (e.g. an EMA target network).

        The engine writes them as safetensors into every checkpoint and hands them back to
        :meth:`load_state_dict` on resume; empty means nothing to save.
        """
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None
