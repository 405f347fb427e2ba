"""``distill-diffusion bench add``: the arguments of the ADD speed benchmark (:mod:`.bench_speed`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "ADD speed: a generator + discriminator cycle vs the student, VAE decode, ViT and heads passes it cannot avoid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 32], output="benchmarks/results/add_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.add.bench_speed import run_add_benchmark

    return run_speed(args, run_add_benchmark)
