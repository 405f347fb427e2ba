"""One pipeline of a quality benchmark (``bench quality``, ``bench methods``, the quickstart): a model, an optional LoRA,
a sampler, guidance scale(s) and step counts; and its command-line spelling, ``NAME=PATH[,lora=DIR][,sampler=S]...``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distill_diffusion.errors import UserError, require

DEFAULT_STEPS = (1, 2, 4, 8)


@dataclass
class PipelineSpec:
    """One pipeline of the benchmark: ``load_pipeline(model, lora, sampler)`` sampled at each of ``steps``.

    ``guidance_scale`` is one scale (``None``: the model card's for its sampler, else the sampler's) or a sweep of
    several; every (steps, guidance) pair becomes a row. A one-element sweep is stored as its single value, so both
    spell the same spec. ``sampler`` None: as ``generate``, the one the LoRA's (else the model's) model card records
    (:func:`~distill_diffusion.pipelines.card.resolve_sampling`), set when the benchmark runs.
    """

    name: str
    model: str
    lora: str | None = None
    sampler: str | None = None
    guidance_scale: float | tuple[float, ...] | None = None
    steps: tuple[int, ...] = DEFAULT_STEPS

    def __post_init__(self) -> None:
        from distill_diffusion.pipelines.samplers import get_sampler

        if self.sampler is not None:
            get_sampler(self.sampler)
        require(bool(self.name) and "/" not in self.name, f"pipeline name {self.name!r} must be non-empty, without '/'")
        require(bool(self.steps) and all(s >= 1 for s in self.steps), f"{self.name}: steps {self.steps} must be ≥ 1")
        if isinstance(self.guidance_scale, Sequence):
            sweep = tuple(float(g) for g in self.guidance_scale)
            require(bool(sweep), f"{self.name}: the guidance sweep is empty; pass one or more scales, e.g. guidance=1|2")
            require(len(set(sweep)) == len(sweep), f"{self.name}: guidance scales {sweep} repeat; list each once")
            self.guidance_scale = sweep[0] if len(sweep) == 1 else sweep
        self._check_guidance()

    def _check_guidance(self) -> None:
        from distill_diffusion.pipelines.samplers import check_guidance

        for g in self.guidance_scales:
            if g is not None:
                try:
                    check_guidance(g)
                except UserError as exc:
                    raise UserError(f"{self.name}: {exc}") from None

    @property
    def guidance_scales(self) -> tuple[float | None, ...]:
        """The scales to sample, in the order given (``(None,)``: the sampler's default)."""
        g = self.guidance_scale
        return g if isinstance(g, tuple) else (g,)


def parse_pipeline_spec(text: str, default_steps: Sequence[int] = DEFAULT_STEPS) -> PipelineSpec:
    """``NAME=PATH[,lora=DIR][,sampler=S][,guidance=G|G2..][,steps=1|2|4|8]`` → :class:`PipelineSpec`."""
    fix = "write NAME=PATH[,lora=DIR][,sampler=S][,guidance=1|1.5|2][,steps=1|2|4]"
    head, *options = text.split(",")
    name, sep, model = head.partition("=")
    require(bool(sep and name.strip() and model.strip()), f"--pipeline {text!r}: {fix}")
    kw: dict[str, Any] = {"name": name.strip(), "model": model.strip(), "steps": tuple(default_steps)}
    seen: set[str] = set()
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if key == "preset":  # the old name of sampler=
            from distill_diffusion.pipelines.samplers import warn_preset_deprecated

            warn_preset_deprecated("preset= in --pipeline", "sampler=")
            key = "sampler"
        require(key not in seen, f"--pipeline {text!r}: option {key!r} is given twice; give each option once "
                "(a sweep is one option: steps=1|2|4, guidance=1|2)")
        seen.add(key)
        try:
            if key == "lora":
                kw["lora"] = value.strip()
            elif key == "sampler":
                kw["sampler"] = value.strip()
            elif key == "guidance":
                kw["guidance_scale"] = tuple(float(g) for g in value.split("|"))
            elif key == "steps":
                kw["steps"] = tuple(int(s) for s in value.split("|"))
            else:
                raise UserError(f"--pipeline {text!r}: unknown option {key!r}; {fix}")
        except ValueError:
            raise UserError(f"--pipeline {text!r}: bad value for {key}: {value!r}; {fix}") from None
        require(bool(sep), f"--pipeline {text!r}: option {option!r} has no '='; {fix}")
    return PipelineSpec(**kw)
