"""The progressive-distillation toy benchmark: train ``tiny/progressive`` on the toy world, time each round, and
score every round's student beside the teacher (FID, CLIP score, prompt accuracy; ``bench quality`` format).

Salimans & Ho, arXiv:2202.00512 report FID against step count, one student per round; this is that curve on the
toy world: the teacher under DDIM with the checkpoint's own spacing and with trailing spacing (the grid the
students use) at 1-8 and 50 steps, and each round's student at its own step count, same prompts and seeds.
Training resumes where it stopped; the seconds of each stage are kept in ``<run_dir>/stage_seconds.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PRESET = "tiny/progressive"


class StageTimer:
    """An engine callback adding each step's wall-clock seconds to its stage, saved after every step."""

    def __init__(self, stages: list[Any], path: Path) -> None:
        self.ends = [sum(s.steps for s in stages[: i + 1]) for i in range(len(stages))]
        self.names = [s.name for s in stages]
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.last = time.perf_counter()

    def __call__(self, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        name = self.names[next(i for i, end in enumerate(self.ends) if step <= end)]
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 1)
        self.last = now
        self.path.write_text(json.dumps(self.seconds, indent=2))


def toy_plan(world: Any, run: Any) -> Any:
    """The run's :class:`RoundPlan` on the toy teacher's schedule (its training timesteps read from its scheduler config)."""
    from distill_diffusion.trainers.methods.progressive.plan import RoundPlan

    scheduler = json.loads((world.teacher / "scheduler" / "scheduler_config.json").read_text())
    return RoundPlan(run.method_config, int(scheduler["num_train_timesteps"]), run.train.max_train_steps)


def train_toy_progressive(world: Any, run_dir: Path) -> tuple[Any, dict[str, float]]:
    """Train (or resume, or reuse when finished) the tiny preset on ``world``; returns its run config and stage seconds."""
    from distill_diffusion.config import build_run_config, load_preset
    from distill_diffusion.trainers.engine.build import train
    from distill_diffusion.trainers.methods.progressive import Progressive

    preset = load_preset(PRESET)
    preset["model"]["pretrained_model_name_or_path"] = str(world.teacher)
    preset["data"]["train_data_dir"] = str(world.data)
    preset["train"].update(output_dir=str(run_dir), resume_from_checkpoint="latest")
    run = build_run_config("progressive", Progressive, preset)
    stages = toy_plan(world, run).stages()
    timer = StageTimer(stages, run_dir / "stage_seconds.json")
    if not (run_dir / "model_index.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        train(run, callbacks=[timer])
    return run, timer.seconds


def run_progressive_toy(output_dir: str | Path = "benchmarks/results/toy_quality/progressive", run_dir: str | Path = "toy_runs/progressive",
                        num_images: int = 1024, guidance_scale: float = 3.0, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Train, then benchmark the teacher and every round's student; writes ``output_dir`` (results + training.json)."""
    from distill_diffusion.eval.bench_quality import PipelineSpec, run_quality_benchmark
    from distill_diffusion.quickstart import toy_bench_settings
    from distill_diffusion.toy.build import ensure_toy_world

    world, run_dir, out = ensure_toy_world(cache_dir=cache_dir), Path(run_dir), Path(output_dir)
    run, seconds = train_toy_progressive(world, run_dir)
    plan = toy_plan(world, run)
    student_g = guidance_scale if run.method_config.guidance == "distill" else 1.0
    specs = [
        PipelineSpec("teacher", str(world.teacher), preset="ddim", guidance_scale=guidance_scale, steps=(1, 2, 4, 8, 50)),
        PipelineSpec("teacher-trailing", str(world.teacher), preset="ddim-trailing", guidance_scale=guidance_scale, steps=(1, 2, 4, 8)),
    ]
    for stage, steps in zip(plan.stages()[int(plan.has_guidance_stage):], plan.student_steps):
        if steps <= 8:
            specs.append(PipelineSpec(stage.name, str(run_dir / stage.name), preset="progressive", guidance_scale=student_g, steps=(steps,)))
    result = run_quality_benchmark(specs, out, toy_bench_settings(world, num_images, cache_dir))
    training = {"preset": PRESET, "stage_seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1),
                "stages": [{"name": s.name, "steps": s.steps} for s in plan.stages()], "method": json.loads(json.dumps(vars(run.method_config)))}
    (out / "training.json").write_text(json.dumps(training, indent=2))
    print(Path(result["files"]["markdown"]).read_text())
    print(f"training: {training['total_minutes']} min; " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    return result
