"""``distill-diffusion bench lcm``: the arguments of the LCM-LoRA speed benchmark (:mod:`.bench_speed`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "LCM-LoRA speed: step vs its unavoidable passes; 4-step vs 50-step latency"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/lcm_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.lcm.bench_speed import run_lcm_benchmark

    return run_speed(args, run_lcm_benchmark)
