"""``distill-diffusion bench ladd-gpu``: the SD 1.5 LADD-LoRA GPU benchmark (:mod:`.bench_gpu`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_gpu_options, run_gpu

HELP = "LADD-LoRA generator + discriminator cycle images/s and peak memory, SD 1.5 UNet (random weights), CUDA GPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/ladd_gpu_sd15.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.ladd.bench_gpu import run_sd15_ladd_benchmark

    return run_gpu(args, run_sd15_ladd_benchmark)
