"""``distill-diffusion bench lcm``: the arguments of the LCM-LoRA speed benchmark (:mod:`.bench_speed`)."""

from __future__ import annotations

import argparse

from distill_diffusion.threads import fix_threads

HELP = "LCM-LoRA speed: step vs its unavoidable passes; 4-step vs 50-step latency"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--output", default="benchmarks/results/lcm_speed.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps shared CPUs reproducible)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.lcm.bench_speed import run_lcm_benchmark

    fix_threads(args.threads)
    run_lcm_benchmark(steps=args.steps, batch_sizes=tuple(args.batch_sizes), output=args.output)
    return 0
