"""Activation checkpointing that recomputes each block in the mode it first ran in.

Chen et al., "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174: a checkpointed block keeps only its
inputs and runs its forward again during backward. The recomputation must be the same function as the forward, but a
UNet can run in several modes within one step: a LoRA student's UNet is also its teacher and LADD's discriminator
backbone (adapters off, :func:`~distill_diffusion.models.lora.adapters_disabled`), and diffusers' own forward scales
the LoRA per call (``cross_attention_kwargs["scale"]``). Those switches are back in their default position when
backward runs, so stock checkpointing recomputes a teacher block as the student: torch's CheckpointError where the
saved tensors differ, wrong gradients (through the student instead of the frozen teacher) where they do not.

:func:`checkpoint_in_mode` is the ``gradient_checkpointing_func`` diffusers calls for every checkpointed block
(``ModelMixin.enable_gradient_checkpointing``). It is torch's non-reentrant checkpoint (which already restores the RNG
and autocast state) with a ``context_fn`` that records the block's mode when the block runs forward and puts it back
around the recomputation: every peft layer's adapter switch, active adapter and scaling, and the ``training`` flag of
dropout and batch-norm layers. Hooks on a module inside a checkpointed block (a resnet, a transformer block, or
below) can fire again during backward (pre-hooks do; torch stops a recomputation once it has the saved tensors,
usually before the forward hooks): a hook that records activations there and stays registered through backward
checks :func:`recomputing`. The UNet's stages (``down_blocks.<i>``, ``mid_block``, ``up_blocks.<i>``) are never
recomputed, so hooks on them, and features read from their outputs, see each forward once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

#: Attributes of a peft tuner layer that choose, per call, what its forward computes.
PEFT_MODE_ATTRIBUTES = ("_disable_adapters", "_active_adapter", "scaling")
#: Modules whose output depends on ``training`` (dropout, batch statistics); the flag of any other changes nothing.
TRAINING_SENSITIVE: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)

_Slot = tuple[nn.Module, str]
#: Per block, the (module, attribute) slots of its mode, listed once (walking an SD UNet's 3,500 modules on every
#: forward costs milliseconds) and listed again once a peft layer or a training-sensitive module has been registered
#: anywhere since (peft's adapter injection ``setattr``s each new layer into its parent). Other registrations, such as
#: the ``ModuleList`` slice a diffusers mid block builds on every forward, leave the lists valid.
_slots: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[_Slot]]] = weakref.WeakKeyDictionary()
_generation = [0]
_local = threading.local()


def _has_mode(module: nn.Module) -> bool:
    return hasattr(module, "_disable_adapters") or isinstance(module, TRAINING_SENSITIVE)  # peft's BaseTunerLayer has the first


def _module_registered(_parent: nn.Module, _name: str, module: nn.Module | None) -> None:
    if module is not None and _has_mode(module):
        _generation[0] += 1


torch.nn.modules.module.register_module_module_registration_hook(_module_registered)


def mode_slots(block: nn.Module) -> list[_Slot]:
    """Where ``block``'s mode lives: each peft layer's :data:`PEFT_MODE_ATTRIBUTES`, each
    :data:`TRAINING_SENSITIVE` module's ``training``."""
    cached = _slots.get(block)
    if cached is not None and cached[0] == _generation[0]:
        return cached[1]
    slots: list[_Slot] = []
    for module in block.modules():
        if hasattr(module, "_disable_adapters"):  # peft's BaseTunerLayer, without importing peft here
            slots += [(module, a) for a in PEFT_MODE_ATTRIBUTES if hasattr(module, a)]
        elif _has_mode(module):
            slots.append((module, "training"))
    _slots[block] = (_generation[0], slots)
    return slots


def _value(value: Any) -> Any:
    """A copy of a container (peft scales ``scaling`` in place); a scalar or string as is."""
    return type(value)(value) if isinstance(value, (dict, list, set)) else value


def capture_mode(block: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    """``block``'s mode now: (module, attribute, value) for every slot."""
    return [(m, a, _value(getattr(m, a))) for m, a in mode_slots(block)]


@contextmanager
def restored_mode(mode: list[tuple[nn.Module, str, Any]]) -> Iterator[None]:
    """Put a captured mode back for the duration (marking it as a recomputation), then the mode found on entry."""
    found = [(m, a, getattr(m, a)) for m, a, _ in mode]
    for m, a, v in mode:
        setattr(m, a, _value(v))
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        for m, a, v in found:
            setattr(m, a, v)


def recomputing() -> bool:
    """True while a block checkpointed by :func:`checkpoint_in_mode` runs its forward again inside backward."""
    return getattr(_local, "depth", 0) > 0


def _contexts(block: nn.Module) -> tuple[Any, Any]:
    # called by torch when the block runs forward: the mode is read now, restored for the recomputation
    return nullcontext(), restored_mode(capture_mode(block))


def checkpoint_in_mode(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)`` under torch's non-reentrant checkpoint, recomputed in the mode it ran in."""
    return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False, context_fn=partial(_contexts, block), **kwargs)


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient checkpointing on every block of a diffusers model that supports it, with :func:`checkpoint_in_mode`."""
    model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_in_mode)
