"""Inference: samplers per method (scheduler, steps, guidance), the sampler an artefact's model card records, and a loader
returning a stock diffusers pipeline.

Exports resolve lazily (PEP 562) so that building the CLI parser does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAMPLERS": "samplers",
    "Sampler": "samplers",
    "SamplingChoice": "card",
    "build_scheduler": "samplers",
    "get_sampler": "samplers",
    "load_pipeline": "loader",
    "resolve_lora": "loader",
    "resolve_sampling": "card",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
