"""Progressive-distillation speed benchmark (``distill-diffusion bench progressive``): a round's training step vs the
passes it cannot avoid.

Salimans & Ho, arXiv:2202.00512, Alg. 2: a step needs two teacher forwards (the DDIM steps t → t' → t'') and one
student forward+backward. On the tiny toy UNet (CPU, pre-encoded latents, a w-conditioned student in its first
halving round, so the teacher is the guidance-distilled student: one forward per DDIM step, no CFG pass), the
engine's step is timed against those passes, each alone on the same batch in the same process. Torch is imported
when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "progressive distillation speed: a round's step vs its two teacher passes and the student's forward+backward"
STEP_TARGET = 1.10
ENGINE_KEY = "engine progressive step"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/progressive_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_progressive_benchmark)


def measure_training(batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of the engine step and of each unavoidable pass, at one batch size, in a halving round."""
    import torch

    from distill_diffusion.bench import timing as bench

    with tempfile.TemporaryDirectory() as tmp:
        options = {"start_steps": 64, "target_steps": 32, "steps_per_round": [10**6], "guidance_steps": 1, "time_cond_proj_dim": 32}
        engine, data = bench.tiny_engine(Path(tmp), "progressive", batch_size, options)
        m = engine.method
        m.on_stage_end(0, {})  # past the guidance stage: the round teacher is the w-conditioned student
        engine.state.stage, engine.state.global_step = 1, 1
        batch = bench.collate_latents([data[i] for i in range(batch_size)])
        x0, c = batch["latents"], batch["prompt_embeds"]
        grid, w = m.plan.grid(1), m.sample_w(batch_size, x0.device)
        i = torch.randint(0, grid.student_steps, (batch_size,))
        t, tpp = grid.pairs[i].unbind(1)
        z = m.schedule.add_noise(x0, torch.randn_like(x0), t)

        @torch.no_grad()
        def teacher() -> None:
            m.teacher_step(z, t, tpp, c, w)

        def student_fb() -> None:
            m.student_denoiser(m.models["unet"])(z, t, c, **m.w_condition(w)).x0.square().mean().backward()
            engine.optimizers["unet"].zero_grad(set_to_none=True)

        one_teacher = bench.median_seconds(teacher, steps)
        return {
            "teacher forward + DDIM step, 1st": one_teacher,
            "teacher forward + DDIM step, 2nd": one_teacher,
            "student forward+backward": bench.median_seconds(student_fb, steps),
            ENGINE_KEY: bench.median_seconds(bench.engine_stepper(engine), steps),
        }


def run_progressive_benchmark(steps: int = 20, batch_sizes: tuple[int, ...] = (8, 32),
                              output: str | Path = "benchmarks/results/progressive_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    return bench.write_passes_benchmark(rows, "progressive distillation speed (toy UNet, CPU, halving round of a w-conditioned student)",
                                        STEP_TARGET, steps, output, "not measured here: benchmarks/gpu_check.sh runs the SD 1.5-size "
                                        "measurement on a GPU")
