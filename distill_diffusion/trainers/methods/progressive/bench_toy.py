"""The progressive-distillation toy benchmark (``distill-diffusion bench progressive-toy``): train ``tiny/progressive`` on the toy world, time each round, and
score every round's student beside the teacher (FID, CLIP score, prompt accuracy; ``bench quality`` format).

Salimans & Ho, arXiv:2202.00512 report FID against step count, one student per round; this is that curve on the
toy world: the teacher at 50 DDIM steps and under every training-free sampler of :mod:`distill_diffusion.bench.step_bars`
(DDIM leading and trailing, DPM-Solver++ 2M Karras, UniPC) at 1-8 steps, and each round's student at its own step
count, same prompts and seeds; ``bars.md`` holds the step bars.
Training resumes where it stopped; the seconds of each stage are kept in ``<run_dir>/stage_seconds.json``. Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_toy_run_options
from distill_diffusion.errors import UserError, require
from distill_diffusion.toy.paths import TOY_GUIDANCE, ToyTeacher

HELP = "progressive distillation on the toy world: per-round training time and FID/CLIP/accuracy of every round's student"
CONFIG = "tiny/progressive"
#: Step counts scored for the teacher's training-free samplers and the rounds' students.
STUDENT_STEPS = (1, 2, 4, 8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/progressive", run_dir="toy_runs/progressive")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.toy_runs import load_toy_teacher

    options = toy_method_options(args.guidance_scale, args.sdxl)  # a bad scale is refused before the toy world is built
    teacher, output_dir, run_dir = load_toy_teacher(args)
    run_progressive_toy(teacher, output_dir, run_dir, args.num_images, args.guidance_scale, args.cache_dir, options)
    return 0


def toy_stages(teacher: ToyTeacher, run: Any) -> list[Any]:
    """The run's stages on the toy teacher's schedule (:meth:`Progressive.planned_stages`)."""
    from distill_diffusion.config import ModelConfig
    from distill_diffusion.models.loading import read_teacher_configs
    from distill_diffusion.trainers.methods.progressive import Progressive

    return Progressive.planned_stages(run, read_teacher_configs(ModelConfig(str(teacher.path))))


def toy_method_options(guidance_scale: float, sdxl: bool = False) -> dict[str, Any]:
    """The config's method options at the benchmark's guidance: a fixed-guidance config is trained at that
    guidance_scale, so its students and the teacher rows share one scale (a student that takes the guidance scale as an
    input is sampled at it instead)."""
    from distill_diffusion.config import load_config

    require(guidance_scale >= 1, f"--guidance_scale {guidance_scale}: must be >= 1 (diffusers scale; 1 = no guidance)")
    config = load_config(f"{CONFIG}_xl" if sdxl else CONFIG)
    return {"guidance_scale_min": guidance_scale} if config["method"].get("guidance") == "fixed" else {}


def check_finished_run(run: Any, run_dir: Path) -> None:
    """A finished run in ``run_dir`` is reused only at the guidance it was trained at (a run stopped mid-way is
    refused by the engine's resume check instead)."""
    from distill_diffusion.config import load_yaml
    from distill_diffusion.config_types import read_renamed

    saved = run_dir / "config.yaml"
    if not (run_dir / "model_index.json").is_file() or not saved.is_file():
        return
    want = run.method_config
    method = read_renamed(type(want), load_yaml(saved).get("method") or {}, "method")  # a run saved before the rename too
    scale = float(method.get("guidance_scale_min", want.guidance_scale_min))
    if method.get("guidance") != want.guidance or scale != want.guidance_scale_min:
        raise UserError(f"{run_dir} holds a run trained with guidance {method.get('guidance')} at guidance_scale {scale}, "
                        f"not {want.guidance} at guidance_scale {want.guidance_scale_min}; pass another --run_dir, or that run's "
                        "--guidance_scale")


def train_toy_progressive(teacher: ToyTeacher, run_dir: Path, method_options: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Train (or resume, or reuse when finished) the tiny config with ``method_options`` (:func:`toy_method_options`)
    on ``teacher``; returns its run config and stage seconds."""
    from distill_diffusion.bench.toy_runs import toy_run_config, train_timed

    run = toy_run_config("progressive", CONFIG, teacher, run_dir, method_options)
    check_finished_run(run, run_dir)
    return run, train_timed(run, toy_stages(teacher, run), run_dir)


def run_progressive_toy(toy: ToyTeacher, output_dir: str | Path, run_dir: str | Path, num_images: int = 1024,
                        guidance_scale: float = TOY_GUIDANCE, cache_dir: str | Path | None = None,
                        options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``toy``'s tiny config with ``options`` (:func:`toy_method_options`), then benchmark the teacher and every
    round's student; writes ``output_dir`` (results + training.json)."""
    from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
    from distill_diffusion.bench.specs import PipelineSpec
    from distill_diffusion.bench.step_bars import step_bar_lines, training_free_specs

    run_dir, out = Path(run_dir), Path(output_dir)
    run, seconds = train_toy_progressive(toy, run_dir, toy_method_options(guidance_scale, toy.sdxl) if options is None else options)
    stages = toy_stages(toy, run)
    student_g = guidance_scale if run.method_config.guidance == "distill" else 1.0
    specs = [PipelineSpec("teacher", str(toy.path), sampler="ddim", guidance_scale=guidance_scale, steps=(50,)),
             *training_free_specs(str(toy.path), guidance_scale, STUDENT_STEPS)]
    scored = [s for s in stages if s.export and s.sampling_steps <= max(STUDENT_STEPS)]
    specs += [PipelineSpec(s.name, str(run_dir / s.name), sampler="progressive", guidance_scale=student_g, steps=(s.sampling_steps,))
              for s in scored]
    rounds = [s.name for s in scored]
    result = run_quality_benchmark(specs, out, toy_bench_settings(toy.world, num_images, cache_dir))
    (out / "bars.md").write_text("\n".join(step_bar_lines(result["rows"], {"progressive": rounds})) + "\n")
    training = {"config": toy.config(CONFIG), "stage_seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1),
                "stages": [{"name": s.name, "steps": s.steps} for s in stages], "method": json.loads(json.dumps(vars(run.method_config)))}
    (out / "training.json").write_text(json.dumps(training, indent=2))
    print(Path(result["files"]["markdown"]).read_text())
    print(f"training: {training['total_minutes']} min; " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    return result
