"""``distill-diffusion bench engine``: the arguments of the engine-overhead benchmark (:mod:`.engine`)."""

from __future__ import annotations

import argparse

from distill_diffusion.threads import fix_threads

HELP = "engine overhead: fine-tune step vs bare forward+backward (tiny UNet, CPU)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--output", default="benchmarks/results/engine_overhead.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps shared CPUs reproducible)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.engine import run_engine_benchmark

    fix_threads(args.threads)
    run_engine_benchmark(steps=args.steps, batch_sizes=tuple(args.batch_sizes), output=args.output)
    return 0
