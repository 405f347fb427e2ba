"""LCM speed benchmark (``distill-diffusion bench lcm``): training step vs the passes it cannot avoid, and 4-step vs
50-step generation latency.

Training (LoRA mode, tiny toy UNet, CPU, pre-encoded latents): the engine's LCM step is timed against the
sum of the three passes LCD needs (Luo et al. arXiv:2310.04378 Alg. 1): one batched cond+uncond teacher
forward with the DDIM step, one target forward, and one student forward+backward, each timed alone on the
same batch in the same process. Generation: a stock ``StableDiffusionPipeline`` end to end (text encoder,
UNet steps, VAE decode) with ``LCMScheduler`` at 4 steps, guidance off (the LCM-LoRA sampler), against the
teacher's DDIM at 50 steps with CFG. Latency does not depend on the LoRA weights' values, so the random
tiny pipeline measures the same work a trained one does. Torch is imported when it runs (the CLI imports this
module to build ``--help``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import tempfile
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "LCM-LoRA speed: step vs its unavoidable passes; 4-step vs 50-step latency"
STEP_TARGET = 1.10
LATENCY_TARGET = 0.12


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=20, batch_sizes=[8, 32], output=None)
    p.add_argument("--family", choices=("sd1", "sdxl"), default="sd1",
                   help="the toy teacher's architecture: sd1, or sdxl (toy.tiny_sdxl: two encoders, text_time UNet)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    args.output = args.output or f"benchmarks/results/lcm{'_xl' if args.family == 'sdxl' else ''}_speed.json"
    return run_speed(args, functools.partial(run_lcm_benchmark, family=args.family))


def measure_training(batch_size: int, steps: int, family: str = "sd1") -> dict[str, float]:
    """Median seconds of the engine step and of each unavoidable pass, at one batch size."""
    import torch

    from distill_diffusion.bench.timing import collate_latents, engine_stepper, median_seconds, tiny_engine
    from distill_diffusion.models.batch import latents_and_embeddings
    from distill_diffusion.models.denoiser import Denoiser

    with tempfile.TemporaryDirectory() as tmp:
        engine, data = tiny_engine(Path(tmp), "lcm", batch_size, {"lora_rank": 16, "lora_alpha": 16, "guidance_scale_min": 3.0,
                                                                  "guidance_scale_max": 3.0}, family=family)
        m = engine.method
        batch = collate_latents([data[i] for i in range(batch_size)])
        x0, c = latents_and_embeddings(batch, m.components)  # SDXL: with the pooled text and time ids
        t_nk, t_n, w = m.sample_timesteps_and_w(batch_size, x0.device)
        z = m.schedule.add_noise(x0, torch.randn_like(x0), t_nk)
        target_net = Denoiser(m.target_unet, m.schedule, m.components.prediction_type)
        student = Denoiser(m.models["unet"], m.schedule, m.components.prediction_type)

        @torch.no_grad()
        def teacher() -> None:
            m.teacher_step(z, t_nk, t_n, c, w)

        @torch.no_grad()
        def target() -> None:
            m.consistency(target_net, z, t_n, c)

        def student_fb() -> None:
            m.consistency(student, z, t_nk, c).float().square().mean().backward()
            engine.optimizers["unet"].zero_grad(set_to_none=True)

        return {
            "teacher batched cond+uncond forward + DDIM step": median_seconds(teacher, steps),
            "target forward": median_seconds(target, steps),
            "student forward+backward": median_seconds(student_fb, steps),
            "engine LCM-LoRA step": median_seconds(engine_stepper(engine), steps),
        }


def measure_generation(repeats: int, family: str = "sd1") -> dict[str, float]:
    """Median end-to-end seconds per image: LCM 4 steps (guidance off) vs DDIM 50 steps with CFG."""
    import torch
    from diffusers import DiffusionPipeline

    from distill_diffusion.bench.timing import median_seconds
    from distill_diffusion.pipelines import build_scheduler, get_sampler
    from distill_diffusion.toy.tiny import save_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        pipe = DiffusionPipeline.from_pretrained(save_tiny_pipeline(Path(tmp) / "t", family=family))
        pipe.set_progress_bar_config(disable=True)
        config = pipe.scheduler.config
        results = {}
        for name, sampler, steps, guidance in (("LCM 4 steps", "lcm", 4, 1.0), ("teacher DDIM 50 steps", "ddim", 50, 7.5)):
            pipe.scheduler = build_scheduler(get_sampler(sampler), config)

            def run(steps: int = steps, guidance: float = guidance) -> None:
                pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(0), output_type="np")

            results[name] = median_seconds(run, repeats, warmup=1)
        return results


def run_lcm_benchmark(steps: int = 20, batch_sizes: tuple[int, ...] = (8, 32), repeats: int = 10,
                      output: str | Path = "benchmarks/results/lcm_speed.json", family: str = "sd1") -> dict:
    """Both measurements, a printed table, JSON + markdown results files."""
    import torch

    from distill_diffusion.bench.timing import passes_row

    rows = []
    for batch_size in batch_sizes:
        rows.append(passes_row(batch_size, measure_training(batch_size, steps, family), "engine LCM-LoRA step"))
    gen = measure_generation(repeats, family)
    result = {
        "benchmark": f"LCM-LoRA speed ({'toy SDXL' if family == 'sdxl' else 'toy'} UNet, CPU)",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": platform.processor() or platform.machine(), "steps_timed": steps,
        "training": rows, "step_target": STEP_TARGET,
        "generation_seconds_per_image": gen,
        "latency_ratio": gen["LCM 4 steps"] / gen["teacher DDIM 50 steps"], "latency_target": LATENCY_TARGET,
        "gpu": "not measured: no GPU was available to this run",
    }
    _write(result, Path(output))
    return result


def _write(result: dict, output: Path) -> None:
    from distill_diffusion.bench.timing import passes_table

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    lines = passes_table(result["training"])
    gen = result["generation_seconds_per_image"]
    lines += [
        "",
        f"Step target: step / sum of passes ≤ {result['step_target']}.",
        "",
        "| generation (end to end, 1 image) | ms |", "|---|---|",
        *[f"| {k} | {v * 1e3:.1f} |" for k, v in gen.items()],
        "",
        f"4-step / 50-step latency = **{result['latency_ratio']:.3f}** (target ≤ {result['latency_target']}).",
        f"Medians; {result['threads']} threads, torch {result['torch']}, {result['device']}. GPU: {result['gpu']}.",
    ]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
