"""``distill-diffusion bench bksdm``: the arguments of the BK-SDM speed benchmark (:mod:`.bench_speed`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "BK-SDM speed: a training step vs the teacher's forward and the student's forward+backward"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/bksdm_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.bksdm.bench_speed import run_bksdm_benchmark

    return run_speed(args, run_bksdm_benchmark)
