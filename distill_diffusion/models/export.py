"""Stock diffusers pipelines from our components (for validation, and as the exported artefact) and model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch import nn

from distill_diffusion.models.loading import _HUB_ID, SDComponents


def build_pipeline(components: SDComponents, unet: nn.Module | None = None, scheduler: Any = None) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` over the (unwrapped) components; DDIM from the checkpoint's config by default."""
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet if unet is not None else components.unet,
        scheduler=scheduler if scheduler is not None else DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(components: SDComponents, output_dir: Path, *, unet: nn.Module, method: str, paper: str) -> Path:
    """Save a full diffusers pipeline folder (safetensors) with the trained UNet and a model card."""
    pipeline = build_pipeline(components, unet=unet, scheduler=components.scheduler)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    usage = """
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("path/to/this/folder")
image = pipe("a prompt", num_inference_steps=50).images[0]
"""
    write_model_card(output_dir, base_model=components.source, method=method, paper=paper, usage=usage)
    return output_dir


def write_model_card(folder: Path, *, base_model: str, method: str, paper: str, usage: str, extra: str = "") -> Path:
    """A short README.md: what was distilled from what, and how to load it with stock diffusers.

    The metadata names ``base_model`` only for a Hub teacher: the Hub refuses a card whose ``base_model`` is not a
    model id (a local folder), so the card of a local teacher's student could not be uploaded (``--push_to_hub``).
    """
    hub_id = hub_model_id(base_model)
    base = f"base_model: {hub_id}\n" if hub_id else ""
    text = f"""---
library_name: diffusers
{base}tags: [distill-diffusion, {method}]
---

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
    return repo if _HUB_ID.fullmatch(repo) and not Path(repo).expanduser().exists() else None
