"""The round plan of progressive distillation: stages, the DDIM grids each round trains on, the exported scheduler.

Salimans & Ho, arXiv:2202.00512, Alg. 2: a round with N student steps distils a teacher sampled with 2N steps.
On the discrete 1000-step schedule the grid is the one a stock ``DDIMScheduler`` visits (trailing spacing, so
the first step starts at t = 999 whatever N): the student's step i goes ``t_i → s_i`` exactly as the exported
scheduler steps at N, and the teacher's two steps go ``t_i → m_i → s_i`` through the point its own 2N-step
grid evaluates between them.

Alg. 2 starts each student as its teacher (θ ← η). A teacher in another parameterisation than the student (an eps
teacher, a v student) cannot be copied into it that way: the same weights read as v give another x̂. The stage before
the first round (guidance distillation, or else a conversion stage) regresses the student on the first teacher's x̂.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill_diffusion.core.timesteps import ddim_step_pairs, spaced_timesteps
from distill_diffusion.errors import require
from distill_diffusion.trainers.methods.base import Stage
from distill_diffusion.trainers.methods.progressive.config import ProgressiveConfig

GUIDANCE_STAGE = "guidance"
CONVERT_STAGE = "convert"


@dataclass(frozen=True)
class RoundGrid:
    """One halving round: the student's ``(t, s)`` steps and the teacher's midpoints ``m`` (``s < m < t``)."""

    student_steps: int
    pairs: Tensor  # [N, 2] long: evaluate at t, land on s (s < 0: clean end)
    midpoints: Tensor  # [N] long


@functools.cache
def round_grid(num_train_timesteps: int, student_steps: int) -> RoundGrid:
    """The grid of the round whose student takes ``student_steps`` steps (its teacher ``2 * student_steps``)."""
    pairs = ddim_step_pairs(num_train_timesteps, student_steps)
    teacher_t = spaced_timesteps(num_train_timesteps, 2 * student_steps, "trailing")
    # the teacher's 2N grid holds the student's N grid at its even positions; its odd ones are the midpoints
    require(torch.equal(teacher_t[::2], pairs[:, 0]), f"the {2 * student_steps}-step grid does not contain the {student_steps}-step one")
    midpoints = teacher_t[1::2]
    require(bool(((pairs[:, 1] < midpoints) & (midpoints < pairs[:, 0])).all()),
            f"{2 * student_steps} teacher steps do not fit between the {student_steps} student steps of a {num_train_timesteps}-step schedule")
    return RoundGrid(student_steps, pairs, midpoints)


@dataclass(frozen=True)
class RoundPlan:
    """Every stage of a run: a guidance or conversion stage where the plan has one, then one stage per halving round."""

    config: ProgressiveConfig
    num_train_timesteps: int
    #: the original teacher's prediction type (its scheduler's)
    teacher_prediction_type: str
    #: ``train.max_train_steps``, the length of every round (and guidance stage) without a count of its own; None where
    #: the config gives every count, as :meth:`Progressive.check_config` leaves it before training
    default_steps: int | None = None

    @property
    def has_guidance_stage(self) -> bool:
        return self.config.guidance == "distill"

    @property
    def has_convert_stage(self) -> bool:
        """The student predicts another quantity than the teacher (and no guidance stage regresses it on the
        teacher's x̂ first): a conversion stage does, unless ``convert_steps`` is 0."""
        return (not self.has_guidance_stage and self.config.convert_steps != 0
                and self.config.prediction_type != self.teacher_prediction_type)

    @property
    def first_round_stage(self) -> int:
        """The stage index of the first halving round (1 after a guidance or conversion stage)."""
        return int(self.has_guidance_stage or self.has_convert_stage)

    @property
    def student_steps(self) -> list[int]:
        """The student's step count of each round: start/2, start/4, ..., target."""
        return [self.config.start_steps >> (r + 1) for r in range(self.config.num_rounds)]

    def stages(self) -> list[Stage]:
        lengths = self.config.round_steps(self.default_steps if self.config.steps_per_round else self._default())
        rounds = [Stage(f"round-{r + 1}-{n}-steps", steps, export=True, sampling_steps=n)
                  for r, (n, steps) in enumerate(zip(self.student_steps, lengths))]
        if self.has_guidance_stage:
            return [Stage(GUIDANCE_STAGE, self.config.guidance_steps or self._default()), *rounds]
        if self.has_convert_stage:
            return [Stage(CONVERT_STAGE, self.config.convert_steps), *rounds]
        return rounds

    def _default(self) -> int:
        """The length of a stage the config gives no count: ``default_steps``, which must then be set."""
        if self.default_steps is None:
            raise ValueError("a progressive stage has no step count: set method.steps_per_round / guidance_steps or train.max_train_steps")
        return self.default_steps

    def round_index(self, stage: int) -> int | None:
        """The halving round of ``stage`` (0-based), or None for the guidance or conversion stage."""
        r = stage - self.first_round_stage
        return None if r < 0 else r

    def grid(self, stage: int) -> RoundGrid:
        r = self.round_index(stage)
        require(r is not None, "the guidance and conversion stages have no DDIM grid")
        return round_grid(self.num_train_timesteps, self.student_steps[r])

    def steps_after(self, stage: int) -> int:
        """Sampling steps of the student after ``stage``: the round's N, or the start count after guidance or conversion."""
        r = self.round_index(stage)
        return self.config.start_steps if r is None else self.student_steps[r]


def export_scheduler_config(teacher_config: Any, prediction_type: str) -> dict[str, Any]:
    """The teacher's schedule with the student's parameterisation, trailing spacing and a clean last step.

    ``set_alpha_to_one``: DDIM's last step lands on alpha = 1, the clean end the student was trained to
    reach (``NoiseSchedule``: s < 0). ``timestep_spacing="trailing"`` gives the grid of :func:`round_grid`.
    """
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    config.update(prediction_type=prediction_type, timestep_spacing="trailing", set_alpha_to_one=True,
                  clip_sample=False, thresholding=False)
    return config


def check_start_steps(num_train_timesteps: int, config: ProgressiveConfig) -> None:
    """The first round's teacher samples ``start_steps`` DDIM steps: no more than its training timesteps."""
    require(config.start_steps <= num_train_timesteps,
            f"method.start_steps={config.start_steps} is more than the teacher's {num_train_timesteps} training timesteps "
            f"(a DDIM grid cannot be finer than the schedule); pass --method.start_steps {1 << (num_train_timesteps.bit_length() - 1)} or less")


@torch.no_grad()
def ddim_sample(denoiser: Any, z: Tensor, pairs: Tensor, c: Tensor, **unet_kwargs: Any) -> Tensor:
    """Deterministic DDIM from ``z`` over ``pairs`` (:func:`round_grid`): the sampler a student is distilled for."""
    from distill_diffusion.core import append_dims, ddim_step

    schedule = denoiser.schedule
    for t, s in pairs.tolist():
        out = denoiser(z, torch.full((z.shape[0],), t, device=z.device), c, **unet_kwargs)
        s_t = torch.full((z.shape[0],), s, device=z.device)
        z = ddim_step(out.x0, out.eps, append_dims(schedule.alpha(s_t), z.ndim), append_dims(schedule.sigma(s_t), z.ndim))
    return z
