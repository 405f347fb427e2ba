"""The method registry: method name → (module path, class name). Adding a method is one line here."""

from __future__ import annotations

import importlib

from distill_diffusion.errors import UserError

#: Import lazily so `distill-diffusion --help` does not import torch-heavy modules.
METHODS: dict[str, str] = {
    "finetune": "distill_diffusion.trainers.methods.finetune:FineTune",
    "lcm": "distill_diffusion.trainers.methods.lcm:LCM",
}


def get_method_class(name: str) -> type:
    """Return the method class for ``name``; unknown names fail with the list of valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_method_config_class(name: str) -> type:
    """The dataclass that configures method ``name`` (its ``config_class`` attribute)."""
    return get_method_class(name).config_class
