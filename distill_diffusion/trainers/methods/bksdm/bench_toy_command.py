"""``distill-diffusion bench bksdm-toy``: BK-SDM students on the toy world, KD against no KD, + LCM-LoRA (:mod:`.bench_toy`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_toy_run_options
from distill_diffusion.toy.paths import BKSDM_TOY_GUIDANCE

HELP = "BK-SDM on the toy world: base/small/tiny students, small without KD, small + LCM-LoRA; FID/CLIP/accuracy, size, latency"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/bksdm", run_dir="toy_runs/bksdm",
                        guidance_scale=BKSDM_TOY_GUIDANCE)
    p.add_argument("--max_train_steps", type=int, default=None, help="steps of each student (default: the tiny/bksdm config's)")
    p.add_argument("--lcm_steps", type=int, default=None, help="steps of each LCM-LoRA (default: the tiny/lcm_lora config's)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.bksdm.bench_toy import run_bksdm_toy

    run_bksdm_toy(args.output_dir, args.run_dir, args.num_images, args.guidance_scale, args.cache_dir, args.max_train_steps, args.lcm_steps)
    return 0
