"""LADD speed benchmark (``distill-diffusion bench ladd``): one generator + discriminator cycle vs the passes it cannot
avoid (arXiv:2403.12015, §3).

A cycle needs, for the generator, the student's forward, the truncated backbone's and the heads' forward on its
re-noised sample and the backward through all three; for the discriminator, the backbone's forward on real and fake latents (no gradients)
and the heads' forward and backward. On the toy UNet (CPU, pre-encoded latents, LoRA student) each pass is timed alone
on the same batch, in turns with the engine's step, in the same process. Torch is imported when it runs (the CLI
imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "LADD speed: a generator + discriminator cycle vs the student, backbone and heads passes it cannot avoid"
STEP_TARGET = 1.15
ENGINE_KEY = "engine LADD cycle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 32], output="benchmarks/results/ladd_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_ladd_benchmark)


def measure_training(batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of the engine's cycle and of each unavoidable pass, at one batch size."""
    import torch

    from distill_diffusion.bench import timing as bench
    from distill_diffusion.models.denoiser import Denoiser
    from distill_diffusion.models.lora import adapters_disabled
    from distill_diffusion.trainers.methods.adversarial.heads import noise_text_condition, sum_over_heads
    from distill_diffusion.trainers.methods.ladd import backbone as bb

    with tempfile.TemporaryDirectory() as tmp:
        engine, data = bench.tiny_engine(Path(tmp), "ladd", batch_size, {"lora_rank": 16, "lora_alpha": 16, "head_width": 64})
        m = engine.method
        batch = bench.collate_latents([data[i] for i in range(batch_size)])
        x0, c = batch["latents"], batch["prompt_embeds"]
        t = torch.full((batch_size,), 999)
        t_d = torch.randint(500, 1000, (batch_size,))
        z = m.schedule.add_noise(x0, torch.randn_like(x0), t)
        lora = [p for p in m.unet.parameters() if p.requires_grad]

        def generator_fb() -> None:
            m.heads.requires_grad_(False)  # frozen in the generator phase, as the engine sets it
            fake = Denoiser(m.models["unet"], m.schedule, m.components.prediction_type)(z, t, c).x0
            with adapters_disabled(m.layers):
                features = bb.unet_features(m.backbone, m.schedule.add_noise(fake, torch.randn_like(fake), t_d), t_d, c, m.taps)
            sum_over_heads(m.heads(features, noise_text_condition(t_d, c))).backward()  # the generator's loss goes through the (frozen) heads
            for p in lora:
                p.grad = None

        both, t2, c2 = torch.cat([x0, x0]), torch.cat([t_d, t_d]), torch.cat([c, c])

        def disc_backbone() -> dict[str, torch.Tensor]:
            with torch.no_grad(), adapters_disabled(m.layers):
                return bb.unet_features(m.backbone, both, t2, c2, m.taps)

        features = disc_backbone()

        def heads_fb() -> None:
            m.heads.requires_grad_(True)
            sum_over_heads(m.models["disc"](features, noise_text_condition(t2, c2))).backward()
            engine.optimizers["discriminator"].zero_grad(set_to_none=True)

        return bench.interleaved_medians({"generator: student + backbone + heads forward+backward": generator_fb,
                                          "discriminator: backbone forward (real + fake)": disc_backbone,
                                          "discriminator: heads forward+backward": heads_fb,
                                          ENGINE_KEY: bench.engine_stepper(engine)}, steps)


def run_ladd_benchmark(steps: int = 30, batch_sizes: tuple[int, ...] = (8, 32),
                       output: str | Path = "benchmarks/results/ladd_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    return bench.write_passes_benchmark(rows, "LADD speed (toy UNet, CPU, LoRA student: one generator + one discriminator update)",
                                        STEP_TARGET, steps, output, "`bench ladd-gpu` (SD 1.5, 512², bf16): not run here, no GPU lent yet")
