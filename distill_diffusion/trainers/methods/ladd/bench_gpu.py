"""SD 1.5-sized LADD-LoRA training benchmark on a CUDA GPU (``distill-diffusion bench ladd-gpu``): images/s and peak
memory of a generator + discriminator cycle.

The cycle is LADD's (Sauer et al., arXiv:2403.12015, §3) through the engine: the student (SD 1.5's UNet with a rank-64
LoRA) denoises in one step; its sample, re-noised, goes through the same UNet with the adapter off up to its mid block
and the conv heads (generator phase, backward to the adapter); then real and fake latents go through the truncated
backbone without gradients and the heads learn (discriminator phase). SD 1.5's UNet architecture with random weights
(:mod:`distill_diffusion.bench.gpu`): speed and memory depend on shapes and dtypes, not on weight values. Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_gpu_options, run_gpu

HELP = "LADD-LoRA generator + discriminator cycle images/s and peak memory, SD 1.5 UNet (random weights), CUDA GPU"
NO_GPU = "the SD 1.5 LADD benchmark needs a CUDA GPU; run it on a GPU machine (the CPU benchmark is `distill-diffusion bench ladd`)"
OPTIONS = {"lora_rank": 64, "lora_alpha": 64, "head_width": 128}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/ladd_gpu_sd15.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_gpu(args, run_sd15_ladd_benchmark)


def run_sd15_ladd_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = False, output: str | Path = "benchmarks/results/ladd_gpu_sd15.json",
                            unet_config: dict[str, Any] | None = None, device: str | None = None) -> dict:
    """Time ``steps`` engine cycles after 3 warm-ups; print and write results.

    ``device=None`` needs CUDA (a one-line error otherwise, before anything is built); ``device="cpu"`` with a tiny
    ``unet_config`` runs it anywhere, as the tests do.
    """
    from distill_diffusion.bench import gpu

    result, engine = gpu.time_method_step("ladd", OPTIONS, "LADD-LoRA generator + discriminator cycle", NO_GPU, batch_size=batch_size,
                                          resolution=resolution, steps=steps, mixed_precision=mixed_precision,
                                          gradient_checkpointing=gradient_checkpointing, unet_config=unet_config, device=device)
    method = engine.method
    trainable = {name: sum(p.numel() for p in module.parameters() if p.requires_grad) for name, module in method.models.items()}
    result["settings"].update(**OPTIONS, taps=method.taps, lora_parameters=trainable["unet"], head_parameters=trainable["disc"])
    gpu.write_results(result, Path(output), {}, f"{result['benchmark']}; LoRA {trainable['unet'] / 1e6:.1f}M and discriminator heads "
                      f"{trainable['disc'] / 1e6:.1f}M trainable parameters; one discriminator update per generator update.")
    return result
