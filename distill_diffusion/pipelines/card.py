"""The sampler an artefact ships: read from its model card, combined with the sampler, steps and guidance asked for.

Every export records in its ``README.md`` front matter, under ``distill_diffusion``, the sampler (a key of
:data:`~distill_diffusion.pipelines.samplers.SAMPLERS`), step count and ``guidance_scale`` to sample it with
(:func:`distill_diffusion.models.export.write_model_card`; docs/evaluation.md#generate). ``generate`` and
``bench quality`` read it here. A LoRA's card describes the LoRA; without ``--lora``, the model's card. A LoRA
whose card says nothing (an adapter trained elsewhere) is refused until a sampler is named; a model whose card says
nothing is a plain teacher, sampled with :data:`TEACHER_FALLBACK` as before. The card is read with
``yaml.safe_load``; a local folder never touches the network, and a hub id's card is fetched with
``hf_hub_download`` (from the cache only under ``local_files_only``), any failure meaning "no card".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_diffusion.errors import UserError, require
from distill_diffusion.models.export import CARD_KEY, CardSampling
from distill_diffusion.models.sources import HUB_ID, looks_like_path
from distill_diffusion.pipelines.loader import resolve_lora
from distill_diffusion.pipelines.samplers import SAMPLERS, get_sampler

CARD_FILE = "README.md"
#: The sampler of a model whose card records none (a plain teacher): the one ``generate`` always used for it.
TEACHER_FALLBACK = "ddim"


@dataclass(frozen=True)
class SamplingChoice:
    """The sampler to use, the card's step count and guidance when they are for that sampler, and a note to print
    once the command's checks have passed (why a fallback or the card was not used), or None."""

    sampler: str
    card: CardSampling | None = None
    note: str | None = None

    def call_kwargs(self, steps: int | None = None, guidance_scale: float | None = None) -> dict[str, Any]:
        """``pipe(...)`` keyword arguments: those given, else the card's, else the sampler's defaults."""
        if self.card is not None:
            steps = self.card.num_inference_steps if steps is None else steps
            guidance_scale = self.card.guidance_scale if guidance_scale is None else guidance_scale
        return get_sampler(self.sampler).call_kwargs(steps, guidance_scale)

    def guidance_scale(self, given: float | None) -> float | None:
        """``given``, else the card's guidance (None: the sampler's default)."""
        return given if given is not None or self.card is None else self.card.guidance_scale


def resolve_sampling(model: str, lora: str | None, sampler: str | None, *, local_files_only: bool = False,
                     option: str = "--sampler NAME") -> SamplingChoice:
    """The sampler for ``model`` (+ ``lora``): ``sampler`` when given, else the one its card records.

    A card that records a different sampler than ``sampler`` lends it nothing (its steps and guidance were chosen for
    its own). ``option`` names how the user picks a sampler, for the fix in messages. Bad input → one-line UserError.
    """
    fix = f"pass {option} (one of {', '.join(SAMPLERS)})"
    what, source = (f"LoRA {lora}", resolve_lora(lora)[0]) if lora is not None else (f"model {model}", model)
    try:
        card = read_card_sampling(source, what, local_files_only)
    except UserError as exc:
        if sampler is None:
            raise UserError(f"{exc}; repair it or {fix}") from None
        return SamplingChoice(sampler, note=f"note: {exc}; ignoring the card and sampling with {sampler!r}")
    if sampler is not None:
        return SamplingChoice(sampler, card if card is not None and card.sampler == sampler else None)
    if card is not None:
        return SamplingChoice(card.sampler, card)
    missing = f"records no sampler (no {CARD_KEY!r} entry in a {CARD_FILE} front matter)"
    require(lora is None, f"{what} {missing}, so how to sample it is unknown (an adapter trained elsewhere?); {fix}")
    return SamplingChoice(TEACHER_FALLBACK, note=f"note: {what} {missing}; sampling it as a teacher with "
                          f"{TEACHER_FALLBACK!r}, or {fix}")


def read_card_sampling(source: str, what: str, local_files_only: bool = False) -> CardSampling | None:
    """The sampling ``source``'s card records (a folder, or a hub id); None without a card, front matter or entry."""
    path = card_path(source, local_files_only)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: cannot read its model card {path} ({exc})") from None
    matter = front_matter(text)
    return None if matter is None else _sampling_entry(_parse_front_matter(matter, path, what), path, what)


def card_path(source: str, local_files_only: bool) -> Path | None:
    """``source/README.md`` for a local folder; for a hub id, the card ``hf_hub_download`` gives (None on any failure)."""
    path = Path(source).expanduser()
    if path.exists():
        return path / CARD_FILE if (path / CARD_FILE).is_file() else None
    if looks_like_path(source) or not HUB_ID.fullmatch(source):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, CARD_FILE, local_files_only=local_files_only))
    except Exception:  # offline, no such repo, no card, no access: all "no sampler information"
        return None


def front_matter(text: str) -> str | None:
    """The YAML between a card's opening ``---`` line and the next ``---`` line; None when the card has none."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---"), None)
    return None if end is None else "\n".join(lines[1:end])


def _parse_front_matter(matter: str, path: Path, what: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(matter)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""  # +2: 0-based, after the opening ---
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"{what}: the front matter of {path} is not valid YAML ({problem}{where})") from None
    require(data is None or isinstance(data, dict), f"{what}: the front matter of {path} is not a YAML mapping")
    return data or {}


def _sampling_entry(data: dict[str, Any], path: Path, what: str) -> CardSampling | None:
    """The card's :data:`CARD_KEY` entry, checked: a known sampler, a step count ≥ 1, a finite guidance ≥ 0."""
    entry = data.get(CARD_KEY)
    if entry is None:
        return None
    bad = f"{what}: {path} front matter, {CARD_KEY}"
    require(isinstance(entry, dict), f"{bad} is not a mapping of sampler, num_inference_steps and guidance_scale")
    sampler, steps, guidance = (entry.get(k) for k in ("sampler", "num_inference_steps", "guidance_scale"))
    require(isinstance(sampler, str) and sampler in SAMPLERS, f"{bad}.sampler {sampler!r} is not a sampler this version knows")
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
            f"{bad}.num_inference_steps {steps!r} is not a step count of 1 or more")
    number = isinstance(guidance, (int, float)) and not isinstance(guidance, bool)
    require(number and math.isfinite(guidance) and guidance >= 0, f"{bad}.guidance_scale {guidance!r} is not a finite number ≥ 0")
    return CardSampling(sampler, steps, guidance)
