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
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distill_diffusion.bench.options import add_speed_options, run_speed
from distill_diffusion.config_files import load_config

HELP = "DMD2 speed: a generator + fake-score cycle vs the generator, real-score, fake-score and classifier passes it cannot avoid"
STEP_TARGET = 1.15
ENGINE_KEY = "engine DMD2 cycle"
#: The timed cycle: tiny/dmd2's adapters, head and real-score guidance (read from the shipped config, so the two cannot
#: drift apart) with DMD2's SDXL count of 5 fake-score updates per generator update (tiny/dmd2 trains with 2).
OPTIONS = {**{k: load_config("tiny/dmd2")["method"][k] for k in ("lora_rank", "lora_alpha", "head_width", "real_guidance_scale")},
           "fake_updates": 5}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output="benchmarks/results/dmd2_speed.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_dmd2_benchmark)


def measure_training(batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of the engine's cycle and of each unavoidable pass times its count in a cycle, at one batch size."""
    from distill_diffusion.bench import timing as bench

    with tempfile.TemporaryDirectory() as tmp:
        engine, data = bench.tiny_engine(Path(tmp), "dmd2", batch_size, OPTIONS)
        io = cycle_inputs(engine.method, [data[i] for i in range(batch_size)])
        n = engine.method.config.fake_updates
        passes = {**score_passes(engine.method, io, n), **training_passes(engine, io, n)}  # name → (pass, runs a cycle)
        seconds = bench.interleaved_medians({**{k: f for k, (f, _) in passes.items()}, ENGINE_KEY: bench.engine_stepper(engine, cycle=n)}, steps)
        return {k: v * passes[k][1] if k in passes else v for k, v in seconds.items()}


def cycle_inputs(m: Any, rows: list[Any]) -> SimpleNamespace:
    """One batch's tensors as a cycle makes them: real latents ``x0`` and conditioning ``c``, the generator's
    backward-simulated input ``z_sim`` at ``t_student``, its ``samples``, and those noised to ``t`` (``z_t``)."""
    import torch

    from distill_diffusion.bench import timing as bench
    from distill_diffusion.models.batch import latents_and_embeddings

    x0, c = latents_and_embeddings(bench.collate_latents(rows), m.components)
    io = SimpleNamespace(x0=x0, c=c, noise=torch.randn_like(x0), t_student=draw_student_timesteps(m, x0))
    io.z_sim = simulate(m, io, io.t_student)  # the samples below are made at these timesteps
    io.t = torch.randint(20, 980, (len(rows),))
    with torch.no_grad():
        io.samples = m.denoiser(m.unet)(io.z_sim, io.t_student, c).x0
    io.z_t = m.schedule.add_noise(io.samples, torch.randn_like(io.samples), io.t)
    return io


def draw_student_timesteps(m: Any, like: Any) -> Any:
    """Student timesteps for the rows of ``like``, drawn as the method draws them."""
    from distill_diffusion.trainers.methods.adversarial.method import sample_student_timesteps

    return sample_student_timesteps(m.config.student_timesteps, m.config.student_timestep_probs, len(like), like.device)


def simulate(m: Any, io: SimpleNamespace, t_student: Any = None) -> Any:
    """Backward simulation without gradients; fresh timesteps unless given, so that how many passes run, on how many
    rows, is the draw's (a row at the first timestep keeps its pure noise)."""
    import torch

    with torch.no_grad():
        t = draw_student_timesteps(m, io.x0) if t_student is None else t_student
        return m.simulation(m.unet, io.noise, t, io.c)


def score_passes(m: Any, io: SimpleNamespace, n: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """The passes without gradients: backward simulation, the real and fake scores, fresh samples."""
    import torch

    from distill_diffusion.core import guidance_scale_to_lcm_w
    from distill_diffusion.models.lora import adapters_disabled
    from distill_diffusion.models.teacher import guided_prediction

    w = torch.full((len(io.x0),), guidance_scale_to_lcm_w(m.config.real_guidance_scale))

    def real_score() -> Any:
        with torch.no_grad(), adapters_disabled(m.layers):
            return guided_prediction(m.denoiser(m.teacher_unet), io.z_t, io.t, io.c, m.uncond(io.c), w)[0]

    def fake_score() -> Any:
        with torch.no_grad(), m.fake_mode():
            return m.denoiser(m.fake_unet)(io.z_t, io.t, io.c).x0

    def fresh_samples() -> None:
        with torch.no_grad():
            m.denoiser(m.unet)(io.z_sim, io.t_student, io.c)

    io.real, io.fake = real_score(), fake_score()
    return {f"backward simulation: generator forwards, no grad (×{n})": (lambda: simulate(m, io), n),
            "real score: guided cond+uncond forward (×1)": (real_score, 1),
            "fake score: forward (×1)": (fake_score, 1),
            f"fresh samples: generator forward, no grad (×{n - 1})": (fresh_samples, n - 1)}  # fmt: skip


def training_passes(engine: Any, io: SimpleNamespace, n: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """The passes with gradients: the generator's losses, the fake score's denoising loss, the classifier's loss
    (``score_passes`` first: the generator's loss needs its real and fake scores)."""
    import torch
    from torch.nn import functional as F

    from distill_diffusion.core.losses import distribution_matching_loss
    from distill_diffusion.models.conditioning import cat
    from distill_diffusion.trainers.engine.phase_step import only_trainable

    m, (generator_phase, fake_phase), b = engine.method, engine.phases, len(io.x0)

    def generator_fb() -> None:
        with only_trainable(engine.step_state, generator_phase):
            x = m.denoiser(m.unet)(io.z_sim, io.t_student, io.c).x0
            gan = sum(F.softplus(-k).mean() for k in m.classify(m.head, x, io.c))
            (distribution_matching_loss(x, io.real, io.fake) + m.config.gan_weight * gan).backward()
        engine.step_state.zero_grad()

    def denoising_fb() -> None:
        eps = torch.randn_like(io.samples)
        with only_trainable(engine.step_state, fake_phase):
            denoiser = m.denoiser(m.fake_unet)
            with m.fake_mode():
                out = denoiser(m.schedule.add_noise(io.samples, eps, io.t), io.t, io.c)
            F.mse_loss(out.model_output, denoiser.target(io.samples, eps, io.t)).backward()
        engine.step_state.zero_grad()

    def classifier_fb() -> None:
        with only_trainable(engine.step_state, fake_phase):
            logits = m.classify(m.head, torch.cat([io.x0, io.samples]), cat([io.c, io.c]))
            sum(F.softplus(-k[:b]).mean() + F.softplus(k[b:]).mean() for k in logits).backward()
        engine.step_state.zero_grad()

    return {"generator: forward + classifier, forward+backward (×1)": (generator_fb, 1),
            f"fake score: denoising forward+backward (×{n})": (denoising_fb, n),
            f"classifier: features (real + fake) + head forward+backward (×{n})": (classifier_fb, n)}  # fmt: skip


def run_dmd2_benchmark(steps: int = 20, batch_sizes: tuple[int, ...] = (8, 32),
                       output: str | Path = "benchmarks/results/dmd2_speed.json") -> dict:
    """The measurement at each batch size, a printed table, JSON + markdown results files."""
    from distill_diffusion.bench import timing as bench

    rows = [bench.passes_row(b, measure_training(b, steps), ENGINE_KEY) for b in batch_sizes]
    n = OPTIONS["fake_updates"]
    return bench.write_passes_benchmark(rows, f"DMD2 speed (toy UNet, CPU, one-base LoRA mode: one generator update + {n} fake-score "
                                        f"updates, {n} engine steps)", STEP_TARGET, steps, output,
                                        "`bench dmd2-gpu` (SD 1.5, 512², bf16, one-base LoRA vs full): not run here, no GPU lent yet")
