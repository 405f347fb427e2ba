"""``distill-diffusion bench engine``: the arguments of the engine-overhead benchmark (:mod:`.engine`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "engine overhead: fine-tune step vs bare forward+backward (tiny UNet, CPU)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 16, 32], output="benchmarks/results/engine_overhead.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.engine import run_engine_benchmark

    return run_speed(args, run_engine_benchmark)
