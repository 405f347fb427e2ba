"""Tensors and modules sharded by FSDP2 (torch ``fully_shard``, as ``accelerate launch --use_fsdp --fsdp_version 2``
applies it), for code that reads or swaps weights outside a module's forward.

FSDP2 (Zhao et al., "PyTorch FSDP", arXiv:2304.11277; torch's per-parameter-sharding rewrite) makes each parameter a
``DTensor`` of which a process keeps one shard, gathers a unit's whole weights in its forward and frees them after (the
root unit only after its backward). So a whole weight needs every process (:func:`full`), weights swapped into the
shards reach a forward only once the gathered copies are freed (:func:`reshard`), and a file's whole tensor goes back
as this process's shard (:func:`like`). On unsharded tensors and modules each of these does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "full_tensor")


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (the tensor itself when it is not sharded)."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor, gathered from every process (collective: every process must call it)."""
    return t.full_tensor() if is_dtensor(t) else t


def like(value: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """A whole tensor ``value`` sharded as ``template`` is (this process's shard), or ``value`` on its device."""
    if is_dtensor(template):
        from torch.distributed.tensor import distribute_tensor

        # every process holds ``value`` (read from one file): each keeps its shard, nothing is sent
        return distribute_tensor(value.to(template.device), template.device_mesh, template.placements, src_data_rank=None)
    return value.to(template.device)


def reshard(modules: Iterable[nn.Module]) -> None:
    """Free the gathered weights of every FSDP2 unit in ``modules``, so their next forward gathers the shards again.

    After weights were swapped into the shards (an EMA target), after a method gathered a unit itself (to call its
    blocks one by one), and after a backward that kept them (R1's second backward): a unit still holding gathered
    weights does not gather again, and would compute with the old ones."""
    from torch.distributed.fsdp import FSDPModule

    for module in modules:
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()
