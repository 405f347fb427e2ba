"""``distill-diffusion bench ladd``: the arguments of the LADD speed benchmark (:mod:`.bench_speed`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "LADD speed: a generator + discriminator cycle vs the student, backbone and heads passes it cannot avoid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 32], output="benchmarks/results/ladd_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.ladd.bench_speed import run_ladd_benchmark

    return run_speed(args, run_ladd_benchmark)
