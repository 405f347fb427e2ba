"""``distill-diffusion bench progressive-toy``: train the tiny config on the toy world and score every round (:mod:`.bench_toy`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_toy_run_options

HELP = "progressive distillation on the toy world: per-round training time and FID/CLIP/accuracy of every round's student"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/progressive", run_dir="toy_runs/progressive")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.progressive.bench_toy import run_progressive_toy

    run_progressive_toy(args.output_dir, args.run_dir, args.num_images, args.guidance_scale, args.cache_dir)
    return 0
