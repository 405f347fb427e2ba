"""``distill-diffusion bench progressive-toy``: train the tiny preset on the toy world and score every round (:mod:`.bench_toy`)."""

from __future__ import annotations

import argparse

HELP = "progressive distillation on the toy world: per-round training time and FID/CLIP/accuracy of every round's student"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--output_dir", default="benchmarks/results/toy_quality/progressive")
    p.add_argument("--run_dir", default="toy_runs/progressive", help="training output (resumed when present)")
    p.add_argument("--num_images", type=int, default=1024, help="images per row (FID is biased at small N)")
    p.add_argument("--guidance_scale", type=float, default=3.0, help="the teacher's (and a w-conditioned student's) guidance")
    p.add_argument("--cache_dir", default=None, help="toy-world cache (default $DISTILL_DIFFUSION_CACHE)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.progressive.bench_toy import run_progressive_toy

    run_progressive_toy(args.output_dir, args.run_dir, args.num_images, args.guidance_scale, args.cache_dir)
    return 0
