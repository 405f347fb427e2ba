"""ADD speed benchmark (``distill-diffusion bench add``): one generator + discriminator cycle vs the passes it cannot
avoid (arXiv:2311.17042, §3).

A cycle needs, for the generator, the student's forward, the VAE decode, the ViT's and the heads' forward on its
sample and the backward through all four, plus the ViT's CLS embedding of the real image the sample came from (decode
and ViT forward, no gradients: the image condition); for the discriminator, the real latents decoded and read by the
ViT (no gradients) and the heads' forward and backward with R1's double backward; and the distillation term's
guided teacher forward (λ = 2.5, on by default). The fakes' features are the
generator's, reused (the frozen VAE and ViT give them unchanged). On the toy UNet and VAE with a toy-sized DINOv2 (CPU,
pre-encoded latents, LoRA student), each pass is timed alone on the same batch, in turns with the engine's step.
Torch is imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_diffusion.bench.options import add_speed_options, run_speed

if TYPE_CHECKING:
    import torch

HELP = "ADD speed: a generator + discriminator cycle vs the student, VAE decode, ViT and heads passes it cannot avoid"
STEP_TARGET = 1.15
ENGINE_KEY = "engine ADD cycle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 32], output="benchmarks/results/add_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_add_benchmark)


def generator_passes(m: Any, x0: torch.Tensor, c: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The generator phase's unavoidable passes on ``(x0, c)`` at t = 999, in the order they are timed."""
    import torch

    from distill_diffusion.models.denoiser import Denoiser
    from distill_diffusion.trainers.methods.adversarial.heads import sum_over_heads

    t = torch.full((x0.shape[0],), 999)
    z = m.schedule.add_noise(x0, torch.randn_like(x0), t)
    lora = [p for p in m.unet.parameters() if p.requires_grad]

    def source_condition() -> torch.Tensor:
        with torch.no_grad():
            return m.source_condition(x0)

    source = source_condition()
    fake0 = x0.clone()

    def distillation_target() -> torch.Tensor:
        return m.distillation_loss(fake0, c)  # the guided teacher's x̂0 (two UNet forwards without gradients)

    def generator_fb() -> None:
        m.heads.requires_grad_(False)  # frozen in the generator phase, as the engine sets it
        fake = Denoiser(m.models["unet"], m.schedule, m.components.prediction_type)(z, t, c).x0
        sum_over_heads(m.heads(*m.features(fake, c, source, own_rows=0))).backward()
        for p in lora:
            p.grad = None

    return {"generator: student + decode + ViT + heads forward+backward": generator_fb,
            "generator: source image's CLS (decode + ViT forward)": source_condition,
            "generator: distillation term's guided teacher forward": distillation_target}


def discriminator_passes(engine: Any, x0: torch.Tensor, c: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The discriminator phase's unavoidable passes: the real latents' decode + ViT features, and the heads' forward
    and backward on real and fake features (the generator's, reused) with R1."""
    import torch

    from distill_diffusion.trainers.methods.adversarial.heads import rows, sample_scores, sum_over_heads

    m, batch_size = engine.method, x0.shape[0]

    def disc_real_features() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            return m.features(x0, c, None, own_rows=batch_size)

    real, cond = disc_real_features()
    features = {k: torch.cat([v, v]) for k, v in real.items()}
    cond2 = torch.cat([cond, cond])

    def heads_fb() -> None:
        m.heads.requires_grad_(True)
        f = {k: v.float().requires_grad_(True) for k, v in features.items()}
        logits = m.models["disc"](f, cond2)
        real = sample_scores(rows(logits, slice(None, batch_size))).sum()
        r1 = sum(g[:batch_size].square().sum() for g in torch.autograd.grad(real, list(f.values()), create_graph=True))
        (sum_over_heads(logits) + r1).backward()
        engine.optimizers["discriminator"].zero_grad(set_to_none=True)

    return {"discriminator: real decode + ViT forward": disc_real_features,
            "discriminator: heads forward+backward (+ R1)": heads_fb}


def measure_training(batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of the engine's cycle and of each unavoidable pass, at one batch size."""
    from distill_diffusion.bench import timing as bench
    from distill_diffusion.toy.tiny import save_toy_dinov2

    with tempfile.TemporaryDirectory() as tmp:
        dinov2 = save_toy_dinov2(Path(tmp) / "dinov2")
        options = {"lora_rank": 16, "lora_alpha": 16, "head_width": 64, "feature_network": str(dinov2), "feature_resolution": 32}
        engine, data = bench.tiny_engine(Path(tmp), "add", batch_size, options)
        batch = bench.collate_latents([data[i] for i in range(batch_size)])
        x0, c = batch["latents"], batch["prompt_embeds"]
        passes = {**generator_passes(engine.method, x0, c), **discriminator_passes(engine, x0, c)}
        return bench.interleaved_medians({**passes, ENGINE_KEY: bench.engine_stepper(engine)}, steps)


def run_add_benchmark(steps: int = 30, batch_sizes: tuple[int, ...] = (8, 32), output: str | Path = "benchmarks/results/add_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    return bench.write_passes_benchmark(rows, "ADD speed (toy UNet + VAE + toy DINOv2, CPU, LoRA student: one generator + one "
                                        "discriminator update)", STEP_TARGET, steps, output, "no GPU benchmark for ADD yet")
