"""Data for the engine: the DataLoader, and an endless batch stream that resumes at an exact position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader, Dataset, IterableDataset

logger = get_logger(__name__)


def build_dataloader(dataset: Dataset, batch_size: int, num_workers: int, collate_fn: Any, seed: int | None) -> DataLoader:
    """Shuffled (map-style) batches; ``drop_last`` keeps every step's batch the same size.

    The engine's Accelerator uses accelerate's seedable sampler, so the order of epoch ``e`` depends
    only on the seed and ``e``: a resumed run sees exactly the batches an uninterrupted run would.
    """
    is_iterable = isinstance(dataset, IterableDataset)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=not is_iterable,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=None if is_iterable else generator,
        # not persistent: set_epoch must reach the dataset's per-epoch augmentation seeds in the workers
        persistent_workers=False,
    )


def batch_stream(accelerator: Accelerator, dataloader: DataLoader, start: int = 0) -> Iterator[dict[str, Any]]:
    """Yield batches forever, starting after ``start`` batches already consumed.

    Map-style data resumes exactly (epoch ``start // len`` with its first ``start % len`` batches
    skipped without loading them). A streaming dataset has no length: it restarts from its beginning.
    """
    try:
        per_epoch = len(dataloader)
    except TypeError:
        per_epoch = 0
    if per_epoch == 0:
        if start:
            logger.warning("streaming dataset: resuming restarts the stream from its beginning")
        while True:
            yield from dataloader
    epoch, skip = divmod(start, per_epoch)
    while True:
        dataloader.set_epoch(epoch)
        # accelerate forwards the epoch to the sampler only; the dataset seeds its augmentation from it too
        if hasattr(dataloader.dataset, "set_epoch"):
            dataloader.dataset.set_epoch(epoch)
        yield from accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        epoch, skip = epoch + 1, 0
