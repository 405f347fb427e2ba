"""Options of progressive distillation (defaults: Salimans & Ho, arXiv:2202.00512, and Meng et al., arXiv:2210.03142;
docs/progressive.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from distill_diffusion.config_types import RenamedOption, check_choices
from distill_diffusion.errors import require
from distill_diffusion.models.teacher import GUIDANCE_RANGE_RENAMES, check_guidance_range


@dataclass
class ProgressiveConfig:
    """Rounds, guidance, student parameterisation and loss weighting of progressive distillation."""

    renamed_options: ClassVar[dict[str, RenamedOption]] = GUIDANCE_RANGE_RENAMES

    #: DDIM steps of the first round's teacher; each round halves them (64 → 32 → 16 ...).
    start_steps: int = 64
    #: Steps of the last round's student (1, 2, 4 or 8 ...), reached from start_steps by halving.
    target_steps: int = 4
    #: Optimizer steps of each halving round: one value for every round, or one per round (later rounds are
    #: harder). Empty: train.max_train_steps per round.
    steps_per_round: list[int] | None = None
    #: distill: a guidance stage first distils classifier-free guidance into a student that takes the guidance scale as
    #: an input (Meng et al.), then every teacher target costs two forwards; fixed: the first round's teacher is guided
    #: at guidance_scale_min (no guidance input; later rounds inherit the guidance); none: no guidance.
    guidance: Literal["distill", "fixed", "none"] = "distill"
    #: Optimizer steps of the guidance stage (guidance: distill). Empty: train.max_train_steps.
    guidance_steps: int | None = None
    #: Optimizer steps of the conversion stage, run before the first round when the student's prediction_type is
    #: not the teacher's (an eps teacher, a v student) and there is no guidance stage: the student, a copy of the
    #: teacher's weights, learns to output the first round's teacher's x̂ so that round 1 starts from it. 0: no
    #: conversion stage (round 1 learns the change of parameterisation).
    convert_steps: int = 200
    #: Lowest teacher guidance_scale the student is distilled for (diffusers convention; 1 = no guidance): each sample
    #: draws one uniformly from [guidance_scale_min, guidance_scale_max]; guidance fixed uses guidance_scale_min.
    guidance_scale_min: float = 2.0
    #: Highest teacher guidance_scale the student is distilled for (guidance distill).
    guidance_scale_max: float = 5.0
    #: Size of the guidance embedding the distilled student gets (UNet time_cond_proj_dim), as LCM's 256.
    time_cond_proj_dim: int = 256
    #: What the student predicts: v (Salimans & Ho's choice) or x0; plain eps is unstable at high noise.
    prediction_type: Literal["v_prediction", "sample", "epsilon"] = "v_prediction"
    #: Loss weighting of the x error: truncated_snr max(SNR, 1) or snr_plus_one SNR + 1 (the same as v-MSE).
    loss_weighting: Literal["truncated_snr", "snr_plus_one"] = "truncated_snr"
    #: diffusers guidance_scale of validation images and the model card (a distilled guidance input reads it; other
    #: students sample without CFG, which they have learnt). Empty: guidance_scale_min.
    validation_guidance_scale: float | None = None

    def __post_init__(self) -> None:
        check_choices(self, "method")
        require(self.start_steps >= 2, f"method.start_steps={self.start_steps} must be >= 2; the reference starts at 64 (or more)")
        require(self.target_steps >= 1, f"method.target_steps={self.target_steps} must be >= 1; pass 1, 2, 4 or 8")
        ratio = self.start_steps // self.target_steps
        require(self.target_steps < self.start_steps and self.start_steps % self.target_steps == 0 and ratio & (ratio - 1) == 0,
                f"method.target_steps={self.target_steps} is not reachable by halving method.start_steps={self.start_steps}; "
                f"pass a target of start / 2^k, e.g. --method.target_steps {max(1, self.start_steps // 16)}")
        require(self.steps_per_round is None or (len(self.steps_per_round) in (1, self.num_rounds) and min(self.steps_per_round) >= 1),
                f"method.steps_per_round={self.steps_per_round}: give one positive number, or one per round ({self.num_rounds} rounds "
                f"from {self.start_steps} to {self.target_steps} steps)")
        require(self.guidance_steps is None or self.guidance_steps >= 1, f"method.guidance_steps={self.guidance_steps} must be >= 1")
        require(self.convert_steps >= 0,
                f"method.convert_steps={self.convert_steps} must be >= 0 (0: no conversion stage)")
        check_guidance_range(self.guidance_scale_min, self.guidance_scale_max)
        require(self.time_cond_proj_dim >= 4, f"method.time_cond_proj_dim={self.time_cond_proj_dim} must be >= 4; LCM uses 256")
        require(self.prediction_type != "epsilon",
                "method.prediction_type=epsilon: an eps-prediction student is unstable at high noise (x0 = (z − σ·eps)/α "
                f"amplifies its error about 15x at t = 999, and {self.loss_weighting} weighting puts that error in the loss); "
                "pass --method.prediction_type v_prediction (or sample)")
        if self.validation_guidance_scale is None:
            self.validation_guidance_scale = self.guidance_scale_min
        require(self.validation_guidance_scale >= 1, f"method.validation_guidance_scale={self.validation_guidance_scale} must be >= 1 "
                "(diffusers scale; 1 = no guidance)")

    @property
    def num_rounds(self) -> int:
        """Halving rounds from ``start_steps`` to ``target_steps``."""
        return (self.start_steps // self.target_steps).bit_length() - 1

    def round_steps(self, default: int) -> list[int]:
        """Optimizer steps of each round (``default``: train.max_train_steps where none are given)."""
        given = self.steps_per_round or [default]
        return given * self.num_rounds if len(given) == 1 else list(given)
