"""What the speed benchmarks share: an engine on random pre-encoded latent batches, median timings, and the
"step vs the passes it cannot avoid" table.

A method's ``bench_speed`` times its engine step against the passes its algorithm needs (each alone, on the same
batch, in the same process); ``bench engine`` and the SD 1.5-sized GPU benchmarks (:mod:`.gpu`) build their
engines here too. Imported only when a benchmark runs (it imports torch): the benchmark modules themselves stay
torch-free for ``distill-diffusion --help``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset


class LatentBatches(Dataset):
    """Pre-encoded ``{"latents", "prompt_embeds"}`` items (the latent-cache path of the engine); with ``pooled_dim``
    also SDXL's pooled ``text_embeds`` and the geometry its micro-conditioning is built from: original size
    ``pixel_size`` square and no crop, what diffusers' pipelines pass at inference."""

    def __init__(self, n: int, latent_shape: tuple[int, int, int], embed_shape: tuple[int, int], pooled_dim: int | None = None,
                 pixel_size: int = 0):
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(n, *latent_shape, generator=g)
        self.embeds = torch.randn(n, *embed_shape, generator=g)
        self.pooled = torch.randn(n, pooled_dim, generator=g) if pooled_dim else None
        self.geometry = {"original_size": torch.tensor([pixel_size, pixel_size]), "crop_top_left": torch.zeros(2, dtype=torch.long)}

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"latents": self.latents[i], "prompt_embeds": self.embeds[i]}
        return item if self.pooled is None else {**item, "text_embeds": self.pooled[i], **self.geometry}


def collate_latents(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def median_seconds(fn: Callable[[], None], steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], None]], steps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each function, timed in turns (one call of each per round) so that a machine's slow and
    fast spells fall on all of them alike: ratios between them are steadier than from back-to-back medians."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def latent_engine(tmp: Path, method_name: str, batch_size: int, sections: dict[str, dict[str, Any]],
                  make_components: Callable[[torch.device], Any] | None = None, latent_size: int | None = None,
                  n_batches: int = 64) -> tuple[Any, LatentBatches]:
    """An :class:`Engine` running method ``method_name`` over random pre-encoded latent batches, and its data.

    The run has no checkpoints and no progress bar (lr 1e-4); ``sections`` update its config sections
    (``model``, ``train``, ``method``), and ``train.gradient_checkpointing`` is honoured as in training.
    ``make_components(device)`` builds the SD components on the accelerator's device (by default the teacher
    named in ``sections["model"]`` is loaded); latents are ``latent_size`` square (the UNet's ``sample_size``
    when ``None``).
    """
    from distill_diffusion.config import build_run_config
    from distill_diffusion.models.batch import vae_scale_factor
    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.models.loading import load_teacher
    from distill_diffusion.trainers.engine.build import (
        build_method,
        enable_gradient_checkpointing,
        make_accelerator,
    )
    from distill_diffusion.trainers.engine.data_loop import build_dataloader
    from distill_diffusion.trainers.engine.loop import Engine
    from distill_diffusion.trainers.methods.registry import get_method_class

    config: dict[str, dict[str, Any]] = {"train": {
        "output_dir": str(tmp / "out"), "train_batch_size": batch_size, "max_train_steps": 10**6,
        "checkpointing_steps": 10**6, "progress_bar": False, "learning_rate": 1e-4,
    }}
    for key, values in sections.items():
        config[key] = {**config.get(key, {}), **values}
    method_class = get_method_class(method_name)
    run = build_run_config(method_name, method_class.config_class, config)
    accelerator = make_accelerator(run.train)
    components = make_components(accelerator.device) if make_components else load_teacher(run.model)
    method = build_method(method_class, run, components)
    if run.train.gradient_checkpointing:
        enable_gradient_checkpointing(method)
    unet = components.unet
    size = latent_size or unet.config.sample_size
    pooled = pooled_text_width(unet.config) if unet.config.get("addition_embed_type") == "text_time" else None
    pixels = size * (vae_scale_factor(components.vae) if components.vae is not None else 8)  # no VAE: SD's x8
    data = LatentBatches(batch_size * n_batches, (unet.config.in_channels, size, size),
                         (components.tokenizer.model_max_length, unet.config.cross_attention_dim), pooled, pixels)
    loader = build_dataloader(data, batch_size, 0, collate_latents, 0)
    return Engine(run, accelerator, method, loader), data


def tiny_engine(tmp: Path, method_name: str, batch_size: int, method: dict[str, Any] | None = None,
                family: str = "sd1") -> tuple[Any, LatentBatches]:
    """:func:`latent_engine` on a tiny random teacher saved under ``tmp`` and loaded like a user's model (``family``
    ``sdxl``: the toy SDXL teacher's architecture, ``toy.tiny_sdxl``)."""
    from distill_diffusion.toy.tiny import save_tiny_pipeline

    teacher = save_tiny_pipeline(tmp / "teacher", family=family)
    model = {"pretrained_model_name_or_path": str(teacher), "local_files_only": True}
    return latent_engine(tmp, method_name, batch_size, {"model": model, "method": method or {}})


def passes_row(batch_size: int, seconds: dict[str, float], engine_key: str) -> dict[str, Any]:
    """One batch size of a "step vs the passes it cannot avoid" benchmark: ``engine_key`` / the sum of the others."""
    passes = sum(v for k, v in seconds.items() if k != engine_key)
    return {"batch_size": batch_size, "seconds": seconds, "sum_of_passes": passes, "ratio": seconds[engine_key] / passes}


def passes_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of :func:`passes_row` rows: each pass, their sum and step / sum."""
    names = list(rows[0]["seconds"])
    lines = ["| batch | " + " | ".join(f"{n} ms" for n in names) + " | sum of passes ms | step / sum |",
             "|---" * (len(names) + 3) + "|"]
    for row in rows:
        cells = " | ".join(f"{row['seconds'][n] * 1e3:.1f}" for n in names)
        lines.append(f"| {row['batch_size']} | {cells} | {row['sum_of_passes'] * 1e3:.1f} | **{row['ratio']:.3f}** |")
    return lines


def engine_stepper(engine: Any, cycle: int = 1) -> Callable[[], None]:
    """One engine step on the next batch of its own data loader, as the training loop takes it (for timing).

    ``cycle`` > 1: one call is that many steps, at global steps 0, 1, ..., as training numbers them, so a phase that
    runs every ``cycle``-th step (DMD2's generator) runs once per call, on the first."""
    from distill_diffusion.trainers.engine.data_loop import batch_stream

    stream = batch_stream(engine.accelerator, engine.dataloader)

    def step() -> None:
        for k in range(cycle):
            if cycle > 1:
                engine.state.global_step = k
            engine.state.batches_seen += 1
            engine.step([next(stream)])

    return step


def write_passes_benchmark(rows: list[dict[str, Any]], benchmark: str, step_target: float, steps: int, output: str | Path,
                           gpu_note: str) -> dict[str, Any]:
    """A "step vs the passes it cannot avoid" benchmark's results: JSON, a markdown table (printed too); returns the dict."""
    result = {
        "benchmark": benchmark, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": platform.processor() or platform.machine(), "steps_timed": steps,
        "training": rows, "step_target": step_target, "gpu": gpu_note,
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    lines = [*passes_table(rows), "", f"Step target: step / sum of passes ≤ {step_target}. Medians; {result['threads']} threads, "
             f"torch {result['torch']}, {result['device']}."]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
    return result
