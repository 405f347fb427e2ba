"""The small training loop the toy's own models share (VAE, tiny CLIP, classifier): seeded batches, one optimizer.

The teacher UNet trains through the engine instead; these models are seconds-to-minutes fits whose whole state
is the model, so a loop of a dozen lines beats building a run for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill_diffusion import threads


def fit(model: nn.Module, batch_loss: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler, *, steps: int, num_items: int, batch_size: int,
        generator: torch.Generator, desc: str = "fit", progress: bool = False) -> list[float]:
    """``steps`` updates on ``batch_loss(indices)`` of random batches drawn from ``generator``; returns each step's
    loss. The model trains in train mode and is left in eval mode."""
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        threads.tick()
        loss = batch_loss(torch.randint(0, num_items, (batch_size,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
