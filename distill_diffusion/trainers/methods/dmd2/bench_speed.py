"""DMD2 speed benchmark (``distill-diffusion bench dmd2``): one generator + fake-score cycle vs the passes it cannot
avoid (arXiv:2405.14867, §4).

A cycle is ``fake_updates`` engine steps: one runs both phases, the others the fake-score phase alone (the two
time-scale update rule, §4.2). It needs, per cycle:

- once, for the generator: its forward on the backward-simulated input and, through the classifier on the fake score's
  bottleneck (GAN term, §4.3), the backward to its adapter, one graph; the real score's guided forward (cond and uncond
  batched, as the method runs them) and the fake score's forward at the noised sample (DMD §3.2), without gradients;
- every step: the backward simulation's generator forwards (§4.5; with the 4-step grid drawn alike, up to 3 forwards,
  on ¾, ½ and ¼ of the batch on average; timed on timesteps drawn as the method draws them); the fake score's denoising forward and backward on the generator's samples; the classifier
  (fake-score features up to the mid block, then the head) forward and backward on real and generated latents;
- on each step without a generator update: the generator's forward making fresh samples, without gradients.

On the toy UNet (CPU, pre-encoded latents, one-base LoRA mode) each pass is timed alone on the same batch, in turns
with the engine's cycle, in the same process, and counted as often as a cycle runs it. Torch is imported when it
runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "DMD2 speed: a generator + fake-score cycle vs the generator, real-score, fake-score and classifier passes it cannot avoid"
STEP_TARGET = 1.15
ENGINE_KEY = "engine DMD2 cycle"
#: tiny/dmd2's method options (rank-16 adapters, 5 fake-score updates per generator update, the toy's guidance 2).
OPTIONS = {"lora_rank": 16, "lora_alpha": 16, "head_width": 64, "fake_updates": 5, "real_guidance_scale": 2.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/dmd2_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_dmd2_benchmark)


def measure_training(batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of the engine's cycle and of each unavoidable pass times its count in a cycle, at one batch size."""
    import torch
    from torch.nn import functional as F

    from distill_diffusion.bench import timing as bench
    from distill_diffusion.core import guidance_scale_to_lcm_w
    from distill_diffusion.core.losses import distribution_matching_loss
    from distill_diffusion.models.batch import latents_and_embeddings
    from distill_diffusion.models.conditioning import cat
    from distill_diffusion.models.lora import adapters_disabled
    from distill_diffusion.models.teacher import guided_prediction
    from distill_diffusion.trainers.engine.phase_step import only_trainable
    from distill_diffusion.trainers.methods.adversarial.method import sample_student_timesteps

    with tempfile.TemporaryDirectory() as tmp:
        engine, data = bench.tiny_engine(Path(tmp), "dmd2", batch_size, OPTIONS)
        m, cfg = engine.method, engine.method.config
        generator_phase, fake_phase = engine.phases
        x0, c = latents_and_embeddings(bench.collate_latents([data[i] for i in range(batch_size)]), m.components)
        noise = torch.randn_like(x0)
        generator = m.denoiser(m.unet)

        def draw() -> torch.Tensor:
            return sample_student_timesteps(cfg.student_timesteps, cfg.student_timestep_probs, batch_size, x0.device)

        def simulation(t_student: torch.Tensor | None = None) -> torch.Tensor:
            # timesteps drawn as the method draws them: how many passes run, on how many rows, is the latest's
            with torch.no_grad():  # (a row at the first timestep keeps its pure noise)
                return m.simulation(m.unet, noise, draw() if t_student is None else t_student, c)

        t_student = draw()
        z_sim = simulation(t_student)
        t = torch.randint(20, 980, (batch_size,))
        with torch.no_grad():
            samples = generator(z_sim, t_student, c).x0
        z_t = m.schedule.add_noise(samples, torch.randn_like(samples), t)
        w = torch.full((batch_size,), guidance_scale_to_lcm_w(cfg.real_guidance_scale))

        def real_score() -> torch.Tensor:
            with torch.no_grad(), adapters_disabled(m.layers):
                return guided_prediction(m.denoiser(m.teacher_unet), z_t, t, c, m.uncond(c), w)[0]

        def fake_score() -> torch.Tensor:
            with torch.no_grad(), m.fake_mode():
                return m.denoiser(m.fake_unet)(z_t, t, c).x0

        real, fake = real_score(), fake_score()

        def generator_fb() -> None:
            with only_trainable(engine.step_state, generator_phase):
                x = generator(z_sim, t_student, c).x0
                gan = sum(F.softplus(-k).mean() for k in m.classify(m.head, x, c))
                (distribution_matching_loss(x, real, fake) + cfg.gan_weight * gan).backward()
            engine.step_state.zero_grad()

        def fresh_samples() -> None:
            with torch.no_grad():
                generator(z_sim, t_student, c)

        def denoising_fb() -> None:
            eps = torch.randn_like(samples)
            with only_trainable(engine.step_state, fake_phase):
                denoiser = m.denoiser(m.fake_unet)
                with m.fake_mode():
                    out = denoiser(m.schedule.add_noise(samples, eps, t), t, c)
                F.mse_loss(out.model_output, denoiser.target(samples, eps, t)).backward()
            engine.step_state.zero_grad()

        def classifier_fb() -> None:
            with only_trainable(engine.step_state, fake_phase):
                logits = m.classify(m.head, torch.cat([x0, samples]), cat([c, c]))
                sum(F.softplus(-k[:batch_size]).mean() + F.softplus(k[batch_size:]).mean() for k in logits).backward()
            engine.step_state.zero_grad()

        n = cfg.fake_updates
        passes = {  # name → (pass, times a cycle runs it)
            f"backward simulation: generator forwards, no grad (×{n})": (simulation, n),
            "generator: forward + classifier, forward+backward (×1)": (generator_fb, 1),
            "real score: guided cond+uncond forward (×1)": (real_score, 1),
            "fake score: forward (×1)": (fake_score, 1),
            f"fresh samples: generator forward, no grad (×{n - 1})": (fresh_samples, n - 1),
            f"fake score: denoising forward+backward (×{n})": (denoising_fb, n),
            f"classifier: features (real + fake) + head forward+backward (×{n})": (classifier_fb, n),
        }
        seconds = bench.interleaved_medians({**{k: f for k, (f, _) in passes.items()}, ENGINE_KEY: bench.engine_stepper(engine, cycle=n)}, steps)
        return {k: v * passes[k][1] if k in passes else v for k, v in seconds.items()}


def run_dmd2_benchmark(steps: int = 20, batch_sizes: tuple[int, ...] = (8, 32),
                       output: str | Path = "benchmarks/results/dmd2_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    n = OPTIONS["fake_updates"]
    return bench.write_passes_benchmark(rows, f"DMD2 speed (toy UNet, CPU, one-base LoRA mode: one generator update + {n} fake-score "
                                        f"updates, {n} engine steps)", STEP_TARGET, steps, output,
                                        "`bench dmd2-gpu` (SD 1.5, 512², bf16, one-base LoRA vs full): not run here, no GPU lent yet")
