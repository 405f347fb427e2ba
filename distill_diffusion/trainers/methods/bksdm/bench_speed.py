"""BK-SDM speed benchmark (``distill-diffusion bench bksdm``): a training step vs the passes it cannot avoid (Kim et al.,
arXiv:2305.15798, §3.3).

A step needs one teacher forward (its output and stage features) and one student forward+backward; on the toy UNet
(CPU, pre-encoded latents, the small variant) the engine's step is timed against those passes, each alone on the
same batch in the same process, in turns (one of each per round, so the machine's slow spells hit all alike). The features are captured in the timed passes too (hooks on both models), and the
student's backward starts from its output and every tapped stage, as the distillation loss's does, so the ratio
measures what the engine and the loss add around them (noising, targets, the loss terms, AdamW, EMA). Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "BK-SDM speed: a training step vs the teacher's forward and the student's forward+backward"
STEP_TARGET = 1.10
ENGINE_KEY = "engine bksdm step"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/bksdm_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_bksdm_benchmark)


def measure_training(batch_size: int, steps: int, variant: str = "small") -> dict[str, float]:
    """Median seconds of the engine step and of each unavoidable pass, at one batch size."""
    import torch

    from distill_diffusion.bench import timing as bench
    from distill_diffusion.trainers.methods.bksdm import features as feat

    with tempfile.TemporaryDirectory() as tmp:
        engine, data = bench.tiny_engine(Path(tmp), "bksdm", batch_size, {"variant": variant})
        m = engine.method
        batch = bench.collate_latents([data[i] for i in range(batch_size)])
        x0, c = batch["latents"], batch["prompt_embeds"]
        t = torch.randint(0, m.schedule.num_train_timesteps, (batch_size,))
        z = m.schedule.add_noise(x0, torch.randn_like(x0), t)

        @torch.no_grad()
        def teacher() -> None:
            with feat.FeatureCapture(m.teacher, feat.teacher_outputs(m.pairs)):
                m.teacher_denoiser(z, t, c)

        def student_fb() -> None:
            # backward from the output and every tapped stage, as the distillation loss reaches them all
            with feat.FeatureCapture(m.unet, feat.student_outputs(m.pairs)) as features:
                out = m.models["unet"](z, t, encoder_hidden_states=c).sample
            sum(f.float().square().mean() for f in [out, *features.values()]).backward()
            engine.optimizers["unet"].zero_grad(set_to_none=True)

        return bench.interleaved_medians({"teacher forward": teacher, "student forward+backward": student_fb,
                                          ENGINE_KEY: bench.engine_stepper(engine)}, steps)


def run_bksdm_benchmark(steps: int = 20, batch_sizes: tuple[int, ...] = (8, 32),
                        output: str | Path = "benchmarks/results/bksdm_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    return bench.write_passes_benchmark(rows, "BK-SDM speed (toy UNet, CPU, small variant: teacher forward + student forward/backward, "
                                        "features hooked)", STEP_TARGET, steps, output,
                                        "not measured here: benchmarks/gpu_check.sh runs the SD 1.4-size measurement on a GPU")
