"""Timestep grids: the LCD skipping-step grid, the inference spacings of diffusers' schedulers, and the step counts that
visit only the timesteps a student was trained at."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill_diffusion.errors import require

SPACINGS = ("leading", "trailing", "linspace")


def skipping_step_grid(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> Tensor:
    """Ascending DDIM solver grid of Latent Consistency Distillation, ``[k-1, 2k-1, ..., N k - 1]``.

    Luo et al., arXiv:2310.04378, Sec. 4.3 (skipping-step schedule, ``k = T // N``), as the reference
    ``DDIMSolver``: 1000/50 gives [19, 39, ..., 999].
    """
    require(
        1 <= num_ddim_timesteps <= num_train_timesteps,
        f"num_ddim_timesteps={num_ddim_timesteps} must be in 1..{num_train_timesteps}; pick e.g. 50",
    )
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1


def previous_on_grid(t: Tensor, k: int) -> Tensor:
    """``t_n = t_{n+k} - k`` clamped at 0 (the LCD teacher solver's target timestep)."""
    return (t - k).clamp(min=0)


def spaced_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> Tensor:
    """Descending inference timesteps, equal to ``DDIMScheduler.set_timesteps`` for the same config.

    Spacings follow Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    arXiv:2305.08891, Table 2; ``steps_offset`` (SD configs use 1) applies to "leading" only, as in
    diffusers. Trailing 4 of 1000 → [999, 749, 499, 249].
    """
    require(spacing in SPACINGS, f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    require(
        1 <= num_steps <= num_train_timesteps,
        f"num_steps={num_steps} must be in 1..{num_train_timesteps}; use fewer inference steps",
    )
    # numpy and its rounding on purpose: the same arithmetic as diffusers, so grids agree exactly.
    if spacing == "linspace":
        steps = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        ratio = num_train_timesteps // num_steps
        steps = (np.arange(0, num_steps) * ratio).round()[::-1] + steps_offset
    else:
        ratio = num_train_timesteps / num_steps
        steps = np.round(np.arange(num_train_timesteps, 0, -ratio)) - 1
    return torch.from_numpy(steps.astype(np.int64).copy())


def ddim_step_pairs(num_train_timesteps: int, num_steps: int) -> Tensor:
    """The ``(t, s)`` pairs a trailing-spacing ``DDIMScheduler`` visits in ``num_steps`` steps, shape [N, 2].

    diffusers' DDIM evaluates the model at ``t`` (``set_timesteps``, trailing spacing: Lin et al.,
    arXiv:2305.08891, Table 2) and lands on ``s = t − T // N``; ``s < 0`` is the clean end (with
    ``set_alpha_to_one`` it is alpha = 1, :class:`NoiseSchedule`'s convention). Where ``T / N`` is not an
    integer, ``s`` can differ by one from the next evaluated ``t``: a student distilled on these pairs
    learns exactly the steps a stock sampler takes.
    """
    t = spaced_timesteps(num_train_timesteps, num_steps, "trailing")
    return torch.stack([t, t - num_train_timesteps // num_steps], dim=1)


#: Scheduler-config key an adversarial student's export writes: the timesteps the student was trained to denoise from.
#: The leading underscore keeps it out of the scheduler's constructor (stock diffusers loads the file without a
#: warning), while ``from_config`` and ``save_pretrained`` carry it along.
TRAINED_TIMESTEPS = "_trained_timesteps"


def visited_timesteps(scheduler: Any, steps: int) -> list[int] | None:
    """The timesteps a fresh copy of ``scheduler`` (same class and config) visits in ``steps`` steps; None when it
    cannot take that many."""
    probe = type(scheduler).from_config(scheduler.config)
    try:
        probe.set_timesteps(steps)
    except ValueError:
        return None
    return [int(t) for t in probe.timesteps]


def trained_step_counts(scheduler: Any) -> list[int] | None:
    """The step counts whose every timestep is one the model was trained at (:data:`TRAINED_TIMESTEPS` in the
    scheduler's config), e.g. [1, 2, 4] for LADD's 999, 749, 499, 249 on LCMScheduler's trailing grid (3 steps visit 666
    and 333); None when the config does not say (every count the other checks allow)."""
    trained = scheduler.config.get(TRAINED_TIMESTEPS)
    if not trained:
        return None
    allowed = {int(t) for t in trained}
    return [n for n in range(1, len(allowed) + 1) if set(visited_timesteps(scheduler, n) or [-1]) <= allowed]


def join_or(counts: list[int]) -> str:
    """``1, 2 or 4``."""
    words = [str(n) for n in counts]
    return " or ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)
