"""Samplers: the scheduler, step count and guidance each method's artefact is sampled with.

One registry (``SAMPLERS``, looked up by name with :func:`get_sampler`) holds every sampler; a new method adds
one line. Guidance is always in the diffusers convention (``guidance_scale`` g, CFG = uncond + g·(cond − uncond);
g ≤ 1 turns CFG off). The LCM paper's w (Luo et al. 2023, arXiv:2310.04378, eq. 9: (1+w)·cond − w·uncond) is g − 1; for a full LCM
student with a guidance embedding (``unet.config.time_cond_proj_dim``) diffusers feeds w = g − 1 to the
embedding and runs no CFG pass.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from distill_diffusion.errors import UserError, require


@dataclass(frozen=True)
class Sampler:
    """How to sample one kind of model: a diffusers scheduler built from the checkpoint's own config.

    ``scheduler``: a class name in ``diffusers`` (``DDIMScheduler``, ``LCMScheduler``, ...), built with
    ``from_config(teacher.scheduler.config, **scheduler_kwargs)`` so the training schedule is kept.
    ``pipeline``: the diffusers pipeline class to return. ``needs_guidance_embedding``: the UNet must
    have ``time_cond_proj_dim`` (a w-conditioned student). ``max_steps_key``: the scheduler-config key
    holding the timestep grid a distilled model was trained on; sampling takes at most that many steps.
    ``trained_fields``: scheduler-config fields an export saves next to its adapter, which override the
    scheduler's defaults when the saved config is of this sampler's scheduler class.
    """

    name: str
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    description: str
    pipeline: str = "StableDiffusionPipeline"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    needs_guidance_embedding: bool = False
    max_steps_key: str | None = None
    trained_fields: tuple[str, ...] = ()

    def call_kwargs(self, steps: int | None = None, guidance_scale: float | None = None) -> dict[str, Any]:
        """Keyword arguments for ``pipe(prompt, **kwargs)``: the sampler's defaults unless overridden."""
        steps = self.num_inference_steps if steps is None else int(steps)
        if steps < 1:
            raise UserError(f"num_inference_steps={steps} is invalid; pass a step count of 1 or more")
        guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        check_guidance(guidance)
        return {"num_inference_steps": steps, "guidance_scale": guidance}


def check_guidance(guidance: float) -> None:
    """A guidance scale must be a finite number ≥ 0: NaN would sample garbage and still exit 0, and a
    negative scale has no meaning (diffusers turns CFG off at ≤ 1; a full LCM would embed w < -1)."""
    require(
        math.isfinite(guidance) and guidance >= 0,
        f"guidance scale {guidance} is invalid; pass a finite number of 0 or more (1 or less turns CFG off)",
    )


def check_steps(scheduler: Any, steps: int, sampler: Sampler | None = None) -> None:
    """Refuse a step count the model was not trained to sample, before any image is made.

    Any scheduler: at most its ``num_train_timesteps`` (diffusers raises a ValueError mid-run otherwise).
    With a ``sampler`` that has a ``max_steps_key``: at most the grid the model was distilled on (an LCM).
    With trained timesteps in the scheduler's config (an adversarial student's export writes them): only step counts
    whose every timestep the student was trained at (:func:`check_trained_timesteps`).
    """
    config = scheduler.config
    trained = config.get("num_train_timesteps")
    require(
        trained is None or steps <= trained,
        f"{steps} sampling steps, but the model was trained with {trained} timesteps; pass {trained} steps or fewer",
    )
    if sampler is not None and sampler.max_steps_key is not None:
        limit = config.get(sampler.max_steps_key)
        require(
            limit is None or steps <= limit,
            f"{steps} sampling steps, but this model was distilled on a grid of {limit} timesteps "
            f"({sampler.max_steps_key}, sampler {sampler.name!r}); pass {limit} steps or fewer",
        )
    check_trained_timesteps(scheduler, steps)


def check_trained_timesteps(scheduler: Any, steps: int) -> None:
    """Refuse a step count that visits a timestep the model was not trained at, when its scheduler config lists them."""
    # imported here: core pulls in torch, and the CLI parses its arguments without it
    from distill_diffusion.core.timesteps import (
        TRAINED_TIMESTEPS,
        join_or,
        trained_step_counts,
        visited_timesteps,
    )

    config, counts = scheduler.config, trained_step_counts(scheduler)
    if counts is None or steps in counts:
        return
    timesteps = config[TRAINED_TIMESTEPS]
    visited = visited_timesteps(scheduler, steps) or []
    untrained = ", ".join(str(t) for t in visited if t not in timesteps) or "others"
    name, listed = type(scheduler).__name__, join_or(counts)
    known = f"{listed} steps" if counts else f"no step count of {name} visits only those"
    fix = f"pass {listed} steps" if counts else "sample it with sampler 'ladd' (LCMScheduler on the trailing grid), as its model card says"
    raise UserError(f"{steps} sampling steps with {name} visit timesteps {untrained}, which this model was not trained at "
                    f"(it was trained at {', '.join(map(str, timesteps))}: {known}); {fix}")


#: LCMScheduler fields an LCM export writes (the solver grid N and the boundary scaling s).
LCM_TRAINED_FIELDS = ("original_inference_steps", "timestep_scaling")

SAMPLERS: dict[str, Sampler] = {
    p.name: p
    for p in (
        Sampler("ddim", "DDIMScheduler", 50, 7.5, "teacher default: DDIM with the checkpoint's own spacing, CFG 7.5"),
        Sampler(
            "ddim-trailing",
            "DDIMScheduler",
            50,
            7.5,
            "DDIM with trailing spacing (first step at t=999; fairer to the teacher at few steps)",
            scheduler_kwargs={"timestep_spacing": "trailing"},
        ),
        Sampler(
            "dpm",
            "DPMSolverMultistepScheduler",
            20,
            7.5,
            "DPM-Solver++ (2M), a strong plain sampler for the teacher at 10-25 steps",
        ),
        Sampler(
            "dpm-karras",
            "DPMSolverMultistepScheduler",
            20,
            7.5,
            "DPM-Solver++ (2M) with Karras sigmas (Lu et al., arXiv:2211.01095; Karras et al., arXiv:2206.00364), "
            "the teacher's strongest few-step plain sampler in most benchmarks",
            scheduler_kwargs={"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        Sampler(
            "unipc",
            "UniPCMultistepScheduler",
            20,
            7.5,
            "UniPC (Zhao et al., arXiv:2302.04867), a predictor-corrector plain sampler for the teacher at 5-20 steps",
        ),
        Sampler(
            "progressive",
            "DDIMScheduler",
            4,
            7.5,
            "progressive-distillation student: its own exported DDIM (trailing, v-prediction) at its round's step count; "
            "a guidance-conditioned student takes guidance_scale through its guidance embedding (one UNet call a step), one with guidance built in needs guidance_scale 1",
        ),
        Sampler(
            "lcm",
            "LCMScheduler",
            4,
            1.0,
            "LCM-LoRA / LCM student: LCMScheduler (original_inference_steps 50), guidance 1 (off) to 2",
            max_steps_key="original_inference_steps",
            trained_fields=LCM_TRAINED_FIELDS,
        ),
        Sampler(
            "ladd",
            "LCMScheduler",
            1,
            1.0,
            "LADD student: LCMScheduler on the full training grid (N steps visit the trailing timesteps 999, 749, ...), "
            "the step counts whose timesteps the student was trained at (its export lists them: 1, 2 or 4), guidance 1 (off)",
            scheduler_kwargs={"original_inference_steps": 1000},
            max_steps_key="original_inference_steps",
            trained_fields=LCM_TRAINED_FIELDS,
        ),
        Sampler(
            "lcm-full",
            "LCMScheduler",
            4,
            8.5,
            "full LCM student with a guidance embedding (it takes guidance_scale, no CFG pass), LatentConsistencyModelPipeline",
            pipeline="LatentConsistencyModelPipeline",
            needs_guidance_embedding=True,
            max_steps_key="original_inference_steps",
            trained_fields=LCM_TRAINED_FIELDS,
        ),
    )
}


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; an unknown name is a UserError listing the valid ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UserError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}") from None


def warn_preset_deprecated(old: str, new: str) -> None:
    """One stderr line for the old spelling of a sampler option (``--preset``, ``preset=`` in a pipeline spec)."""
    print(f"warning: {old} is deprecated and will be removed; use {new} (the same names)", file=sys.stderr)


#: The attribute :func:`attach_sampler` sets on a pipeline: the name of the sampler it samples with.
SAMPLER_ATTRIBUTE = "inference_sampler"


def attach_sampler(pipe: Any, sampler: Sampler) -> None:
    """Record on ``pipe`` the sampler it was built for, so generation checks that sampler's limits."""
    setattr(pipe, SAMPLER_ATTRIBUTE, sampler.name)


def sampler_of(pipe: Any) -> Sampler | None:
    """The sampler :func:`attach_sampler` recorded on ``pipe``; None for a pipeline built elsewhere."""
    name = getattr(pipe, SAMPLER_ATTRIBUTE, None)
    return get_sampler(name) if name is not None else None


def build_scheduler(sampler: Sampler, scheduler_config: Any, trained: dict[str, Any] | None = None) -> Any:
    """The sampler's scheduler from a checkpoint's scheduler config (betas, prediction type kept).

    ``trained``: a scheduler config saved with a distilled adapter; when it is the sampler's scheduler
    class, its ``sampler.trained_fields`` override the defaults (e.g. an LCM-LoRA distilled with N = 20). Its
    :data:`~distill_diffusion.core.timesteps.TRAINED_TIMESTEPS`, whatever the class, go on the scheduler's config, where :func:`check_steps` reads them
    (a full export's own scheduler config carries them through ``from_config``).
    """
    import diffusers

    cls = getattr(diffusers, sampler.scheduler)
    kwargs = dict(sampler.scheduler_kwargs)
    if trained and trained.get("_class_name") == sampler.scheduler:
        kwargs.update({k: trained[k] for k in sampler.trained_fields if k in trained})
    scheduler = cls.from_config(scheduler_config, **kwargs)
    from distill_diffusion.core.timesteps import TRAINED_TIMESTEPS

    if trained and trained.get(TRAINED_TIMESTEPS):
        scheduler.register_to_config(**{TRAINED_TIMESTEPS: list(trained[TRAINED_TIMESTEPS])})
    return scheduler
