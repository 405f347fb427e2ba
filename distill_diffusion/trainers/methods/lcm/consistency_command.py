"""``distill-diffusion bench consistency``: the arguments of the consistency-error diagnostic (:mod:`.consistency`)."""

from __future__ import annotations

import argparse

from distill_diffusion.threads import fix_threads

HELP = "LCM-LoRA runs: consistency error per timestep vs the guided teacher's ODE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("runs", nargs="+", help="output folders of `train lcm` runs (config.yaml + exported LoRA), one teacher")
    p.add_argument("--num_samples", type=int, default=64, help="training images (first in dataset order)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[999, 759, 499, 259, 99, 39])
    p.add_argument("--ode_step", type=int, default=20, help="DDIM step (in timesteps) of the reference ODE solve")
    p.add_argument("--guidance", type=float, default=None, help="teacher guidance scale (default: the first run's w + 1)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    p.add_argument("--output", default="benchmarks/results/lcm_consistency.json")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.lcm.consistency import (
        ConsistencySettings,
        run_consistency_benchmark,
    )

    if args.threads:
        fix_threads(args.threads)
    settings = ConsistencySettings(num_samples=args.num_samples, timesteps=tuple(args.timesteps), ode_step=args.ode_step,
                                   guidance_scale=args.guidance, batch_size=args.batch_size, seed=args.seed,
                                   device=args.device)  # fmt: skip
    run_consistency_benchmark(args.runs, settings, args.output)
    return 0
