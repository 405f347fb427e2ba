"""``distill-diffusion bench adversarial-toy``: LADD and ADD beside the teacher and the LCM-LoRA on the toy world
(:mod:`.bench_toy`)."""

from __future__ import annotations

import argparse

from distill_diffusion.bench.options import add_toy_run_options

#: The students it can train and score (trainers.methods.ladd.bench_toy: RUNS and the LCM-LoRA), named here without torch.
STUDENTS = ("ladd", "add", "lcm-lora")
HELP = "LADD and ADD on the toy world at 1/2/4 steps beside the teacher (50 steps, guidance sweep) and the LCM-LoRA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/adversarial", run_dir="toy_runs/adversarial")
    for name, config in (("ladd", "tiny/ladd"), ("add", "tiny/add"), ("lcm", "tiny/lcm_lora")):
        p.add_argument(f"--{name}_steps", type=int, default=None, help=f"training steps (default: the {config} config's)")
    p.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS),
                   help="the students to train and score beside the teacher (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.trainers.methods.ladd.bench_toy import run_adversarial_toy

    steps = {"ladd": args.ladd_steps, "add": args.add_steps, "lcm-lora": args.lcm_steps}
    run_adversarial_toy(args.output_dir, args.run_dir, args.num_images, args.guidance_scale, args.cache_dir, steps, args.students)
    return 0
