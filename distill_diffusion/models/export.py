"""Stock diffusers pipelines from our components (for validation, and as the exported artefact) and model cards."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch import nn

from distill_diffusion.models.loading import SDComponents
from distill_diffusion.models.sources import HUB_ID

#: The model card's front-matter key under which an export records how to sample it (docs/evaluation.md#generate).
CARD_KEY = "distill_diffusion"


@dataclass(frozen=True)
class CardSampling:
    """How an export is sampled by default, as its model card records it and ``generate`` reads it.

    ``sampler``: a name in ``distill_diffusion.pipelines.SAMPLERS``; ``num_inference_steps`` and ``guidance_scale``
    (diffusers convention: g ≤ 1 turns CFG off) are its step count and guidance.
    """

    sampler: str
    num_inference_steps: int
    guidance_scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_inference_steps", int(self.num_inference_steps))
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))


#: A student sampled as its teacher is (fine-tune, BK-SDM): the ``ddim`` sampler at its step count and guidance.
TEACHER_SAMPLING = CardSampling("ddim", 50, 7.5)


def card_front_matter(method: str, sampling: CardSampling) -> str:
    """The YAML lines of the card's :data:`CARD_KEY` entry: the method and how to sample its export."""
    return yaml.safe_dump({CARD_KEY: {"method": method, **asdict(sampling)}}, sort_keys=False)


def build_pipeline(components: SDComponents, unet: nn.Module | None = None, scheduler: Any = None) -> Any:
    """A ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` for SDXL components, with the checkpoint's
    ``force_zeros_for_empty_prompt``) over the (unwrapped) components; DDIM from the checkpoint's config by default."""
    scheduler = scheduler if scheduler is not None else DDIMScheduler.from_config(components.scheduler.config)
    if components.text_encoder_2 is not None:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
            tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2,
            unet=unet if unet is not None else components.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt, add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet if unet is not None else components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def pipeline_class_name(components: SDComponents) -> str:
    """The stock diffusers text-to-image pipeline of the components' family (what a user loads an export with)."""
    return "StableDiffusionXLPipeline" if components.text_encoder_2 is not None else "StableDiffusionPipeline"


def build_lcm_pipeline(components: SDComponents, unet: nn.Module, scheduler: Any) -> Any:
    """A full LCM student's pipeline: ``LatentConsistencyModelPipeline`` for SD 1.x/2.x (diffusers' LCM pipeline),
    ``StableDiffusionXLPipeline`` for SDXL (diffusers has no SDXL LCM pipeline; the SDXL pipeline feeds a UNet with
    ``time_cond_proj_dim`` the guidance embedding of ``guidance_scale - 1`` and runs no CFG pass, as the LCM one does)."""
    if components.text_encoder_2 is not None:
        return build_pipeline(components, unet=unet, scheduler=scheduler)
    from diffusers import LatentConsistencyModelPipeline

    return LatentConsistencyModelPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(components: SDComponents, output_dir: Path, *, unet: nn.Module, method: str, paper: str,
                  sampling: CardSampling) -> Path:
    """Save a full diffusers pipeline folder (safetensors) with the trained UNet and a model card."""
    pipeline = build_pipeline(components, unet=unet, scheduler=components.scheduler)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    name = type(pipeline).__name__
    usage = f"""
from diffusers import {name}
pipe = {name}.from_pretrained("path/to/this/folder")
image = pipe("a prompt", num_inference_steps={sampling.num_inference_steps}).images[0]
"""
    write_model_card(output_dir, base_model=components.source, method=method, paper=paper, usage=usage, sampling=sampling)
    return output_dir


def write_model_card(folder: Path, *, base_model: str, method: str, paper: str, usage: str, sampling: CardSampling,
                     extra: str = "") -> Path:
    """A short README.md: what was distilled from what, how to sample it, and how to load it with stock diffusers.

    The metadata names ``base_model`` only for a Hub teacher: the Hub refuses a card whose ``base_model`` is not a
    model id (a local folder), so the card of a local teacher's student could not be uploaded (``--push_to_hub``).
    It records ``sampling`` under :data:`CARD_KEY` (:func:`card_front_matter`): ``generate`` samples the export with it.
    """
    hub_id = hub_model_id(base_model)
    base = f"base_model: {hub_id}\n" if hub_id else ""
    text = f"""---
library_name: diffusers
{base}tags: [distill-diffusion, {method}]
{card_front_matter(method, sampling)}---

# {method} distilled from `{base_model}`

Trained with distill-diffusion's `{method}` method ({paper}).
{extra}
## How to load

```python
{usage.strip()}
```
"""
    path = folder / "README.md"
    path.write_text(text)
    return path


def hub_model_id(source: str) -> str | None:
    """The Hub model id of a teacher source (``owner/name`` or ``owner/name@revision``); None for a local folder or file."""
    repo = source.split("@", 1)[0]
    return repo if HUB_ID.fullmatch(repo) and not Path(repo).expanduser().exists() else None
