"""The method contract: what a distillation method gives the engine, and what it gets back.

A method is an algorithm on already-built objects (docs/adding_a_method.md): it receives the teacher's components and
a batch and returns losses. It never sees the command line, the Accelerator, optimizers or file paths
other than the export folder. The engine owns the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from distill_diffusion.models.loading import ExtraModel


@dataclass(frozen=True)
class OptimizerSettings:
    """A phase's own optimizer settings; ``None`` takes the train section's value (a run's ``phases:`` section
    overrides both). A discriminator typically wants its own betas (e.g. (0, 0.99)) and no weight decay."""

    lr_scale: float = 1.0
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a training step (``unet``; ``generator`` and ``discriminator`` for a GAN).

    ``modules`` name the entries of ``method.models`` this phase updates; the engine gives it its own optimizer
    and LR schedule, switches ``requires_grad`` on for these modules' trainable weights only, and zeroes every
    module's gradients first. The phase runs on steps where ``step % every == 0``, ``repeats`` times (each repeat
    after the first on fresh micro-batches). ``gradient_checkpointing``: ``--gradient_checkpointing`` may enable
    it on these modules (False: on none, for modules that are not diffusers models, or whose inner blocks carry hooks
    that must not fire again in backward; a tuple: on the modules it names, e.g. a UNet beside a small head); each block is recomputed in the mode it ran in, so a module in several roles (a
    LoRA UNet as its own teacher) is safe (:mod:`distill_diffusion.models.checkpointing`).
    """

    name: str
    modules: tuple[str, ...]
    optimizer: OptimizerSettings = OptimizerSettings()
    every: int = 1
    repeats: int = 1
    #: Keep an EMA of this phase's parameters when ``train.use_ema`` is on (off for discriminators).
    ema: bool = True
    gradient_checkpointing: bool | tuple[str, ...] = True

    def __post_init__(self) -> None:
        if isinstance(self.modules, str):  # Phase("unet", "unet"): one module
            object.__setattr__(self, "modules", (self.modules,))
        if not self.modules or self.every < 1 or self.repeats < 1:
            raise ValueError(f"phase {self.name!r}: needs at least one module, every >= 1 and repeats >= 1")


@dataclass(frozen=True)
class Stage:
    """A stretch of training with its own optimizer state and LR schedule (a progressive-distillation round).

    At a stage's end the engine hands the method its EMA weights (:meth:`MethodBase.on_stage_end`), exports the
    method's artefact into ``<output_dir>/<name>/`` when ``export`` is set (a round's student), rebuilds the
    optimizers and LR schedules over the next stage, restarts the EMA, and checkpoints
    (``checkpoint-<step>-<name>``). ``name`` is a folder name: letters, digits, ``_ . -``. ``sampling_steps``: the
    step count the stage's exported student is sampled at, where it has one (a round's N; benchmarks score it there).
    """

    name: str
    steps: int
    export: bool = False
    sampling_steps: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) or self.steps < 1:
            raise ValueError(f"stage {self.name!r}: the name must be a folder name (letters, digits, _ . -) and steps >= 1")


@dataclass
class StepContext:
    """What ``compute_loss`` knows about where it is: counters, a per-step store, and the modules to call.

    ``store`` is shared by the phases of one step and cleared between steps, so a discriminator phase reads
    the samples its generator phase made (``ctx.store["fake"]``) without a second generator forward. ``compute_loss``
    runs once per micro-batch: what a phase leaves for a later one is keyed by ``micro_batch`` (the later phase's first
    repeat gets the same micro-batches in the same order, its other repeats fresh ones).
    ``module(name)`` is the wrapped (DDP) module when this phase updates it, else the unwrapped one: a frozen
    network called through DDP would wait for gradients that never come.
    """

    step: int
    stage: int = 0
    stage_step: int = 0
    micro_batch: int = 0
    repeat: int = 0
    store: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def module(self, name: str) -> nn.Module:
        return self.modules[name]


@dataclass
class LossOutput:
    """The scalar to minimise (fp32) and detached numbers to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class DistillationMethod(Protocol):
    """What every method in :mod:`distill_diffusion.trainers.methods` implements (:class:`MethodBase` has defaults).

    ``models`` maps names to the trainable modules. The engine wraps each with accelerate (DDP/FSDP) and writes
    the wrapped module back into the dict; inside ``compute_loss`` call ``ctx.module(name)`` for the forward
    pass, and keep your own reference to the unwrapped module for attribute access.
    """

    paper: ClassVar[str]
    models: dict[str, nn.Module]

    def phases(self) -> list[Phase]: ...

    def stages(self) -> list[Stage]: ...

    def trainable_parameters(self, phase: Phase) -> list[nn.Parameter]: ...

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput: ...

    def enable_frozen_checkpointing(self) -> None: ...

    def on_step_end(self, ctx: StepContext) -> None: ...

    def on_stage_end(self, stage: int, ema: dict[str, list[torch.Tensor]]) -> None: ...

    def export(self, output_dir: Path) -> None: ...

    def validation_pipeline(self) -> Any | None: ...

    def validation_call_kwargs(self) -> dict[str, Any]: ...


class MethodBase:
    """Defaults for the optional hooks, so a method writes only what it needs."""

    paper: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    #: Names of :meth:`phases`, known without building the method (the config's ``phases:`` section is checked against them).
    phase_names: ClassVar[tuple[str, ...]] = ("unet",)
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

    @classmethod
    def check_config(cls, run: Any) -> None:
        """Checks across config sections (e.g. a discriminator that needs a batch of 2 or more); raise UserError."""
        return None

    @classmethod
    def extra_models(cls, config: Any) -> dict[str, ExtraModel]:
        """Models to load beside the teacher, handed to the constructor as ``extra_models={name: module}``."""
        return {}

    @classmethod
    def planned_stages(cls, run: Any, teacher: Any | None) -> list[Stage]:
        """The stages :meth:`stages` will return for ``run``, from configs alone (``teacher``: as for
        :meth:`check_before_loading`), so a benchmark can time each before any weights load. A method with stages of
        its own overrides both."""
        return [Stage("train", run.train.max_train_steps)]

    @classmethod
    def stage_length_options(cls, steps: int) -> dict[str, Any]:
        """Method options that make every stage ``steps`` long beside ``--train.max_train_steps steps`` (a quick look:
        ``bench methods --max_train_steps``); none for a method whose one stage is ``max_train_steps``."""
        return {}

    def stages(self) -> list[Stage]:
        """One stage of ``train.max_train_steps`` unless the method declares its own."""
        return []

    def trainable_parameters(self, phase: Phase) -> list[nn.Parameter]:
        """The weights ``phase`` updates: those of its modules that are trainable (``requires_grad``) when built."""
        return [p for name in phase.modules for p in self.models[name].parameters() if p.requires_grad]

    def enable_frozen_checkpointing(self) -> None:
        """``--gradient_checkpointing`` on frozen networks the trained weights' gradient passes through (ADD's VAE
        decoder); the engine checkpoints the phases' own modules. None by default."""
        return None

    def on_wrapped(self) -> None:
        """The engine has wrapped ``models`` (DDP, FSDP2). FSDP2 shards in place and replaces every parameter by a
        sharded one, so parameter lists taken at construction are stale: take them again here."""
        return None

    def on_step_end(self, ctx: StepContext) -> None:
        return None

    def on_stage_end(self, stage: int, ema: dict[str, list[torch.Tensor]]) -> None:
        """Stage ``stage`` finished; ``ema`` holds each EMA phase's averaged weights (empty without ``--use_ema``)."""
        return None

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
