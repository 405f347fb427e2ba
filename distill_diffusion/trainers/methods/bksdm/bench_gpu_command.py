"""``distill-diffusion bench bksdm-gpu``: the SD 1.4 BK-SDM GPU benchmark (:mod:`.bench_gpu`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_gpu_options

HELP = "BK-SDM-Small training images/s, peak memory and teacher-vs-student sampling latency, SD 1.4 UNet (random weights), CUDA GPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/bksdm_gpu_sd14.json")
    p.add_argument("--variant", choices=("base", "small", "tiny"), default="small")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.bksdm.bench_gpu import run_sd14_bksdm_benchmark

    run_sd14_bksdm_benchmark(batch_size=args.batch_size, resolution=args.resolution, steps=args.steps,
                             mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                             output=args.output, variant=args.variant)  # fmt: skip
    return 0
