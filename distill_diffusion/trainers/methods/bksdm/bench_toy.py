"""The BK-SDM toy benchmark (``distill-diffusion bench bksdm-toy``): students of every variant distilled from the toy teacher, the small one also without
KD and with an LCM-LoRA on top, scored beside the teacher (FID, CLIP score, prompt accuracy; ``bench quality`` format)
with their parameter counts and measured per-step latency. The teacher and the small students sweep guidance, so each
student is also read against the teacher at equal FID (``results.md``'s "at equal FID" table).

Kim et al., arXiv:2305.15798, Table 2-4 compare block-removed students with the teacher at 25 steps, and KD against
the task loss alone (Table 5); that is this table on the toy world. The composed row is "small and fast together"
(an LCM-LoRA trained on the small student, sampled in 1-4 steps) beside the teacher's own LCM-LoRA.
Every run resumes where it stopped; seconds per run are kept in ``<run_dir>/<run>/stage_seconds.json``. Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distill_diffusion.bench.options import add_toy_run_options
from distill_diffusion.errors import require
from distill_diffusion.toy.paths import TOY_GUIDANCE, ToyTeacher

HELP = "BK-SDM on the toy world: base/small/tiny students, small without KD, small + LCM-LoRA; FID/CLIP/accuracy, size, latency"
CONFIG = "tiny/bksdm"
#: Runs of the benchmark: name → method options over the config's.
RUNS: dict[str, dict[str, Any]] = {
    "small": {"variant": "small"},
    "small-no-kd": {"variant": "small", "lambda_out": 0.0, "lambda_feat": 0.0},
    "base": {"variant": "base"},
    "tiny": {"variant": "tiny"},
}
#: LCM-LoRAs trained on a BK-SDM student and on the teacher: "small and fast together".
LCM_RUNS = ("small-lcm-lora", "teacher-lcm-lora")
SAMPLING_STEPS = 25
#: Guidance sweeps: each student is judged against the teacher at equal FID (the FID-vs-faithfulness curve),
#: not at one guidance scale.
TEACHER_SWEEP = (1.5, 2.0, 3.0, 4.5)
STUDENT_SWEEP = (2.0, 3.0, 4.5)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/bksdm", run_dir="toy_runs/bksdm",
                        guidance_scale=TOY_GUIDANCE)
    p.add_argument("--max_train_steps", type=int, default=None, help="steps of each student (default: the tiny/bksdm config's)")
    p.add_argument("--lcm_steps", type=int, default=None, help="steps of each LCM-LoRA (default: the tiny/lcm_lora config's)")
    p.add_argument("--runs", nargs="+", choices=[*RUNS, *LCM_RUNS], default=[*RUNS, *LCM_RUNS],
                   help="the students to train and score beside the teacher (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.toy_runs import load_toy_teacher

    check_runs(args.runs)  # before the toy world is built
    teacher, output_dir, run_dir = load_toy_teacher(args)
    run_bksdm_toy(teacher, output_dir, run_dir, args.num_images, args.guidance_scale, args.cache_dir, args.max_train_steps,
                  args.lcm_steps, args.runs)
    return 0


def check_runs(runs: Sequence[str]) -> None:
    """The small student's LCM-LoRA needs the small student."""
    require("small-lcm-lora" not in runs or "small" in runs, "--runs small-lcm-lora trains on the small student; add small to --runs")


def train_students(teacher: ToyTeacher, run_dir: Path, max_train_steps: int | None, runs: Sequence[str]) -> dict[str, float]:
    """Train (or resume, or reuse) the ``runs`` of :data:`RUNS`; returns seconds per run."""
    from distill_diffusion.bench.toy_runs import toy_run_config, train_timed

    seconds = {}
    for name, options in RUNS.items():
        if name not in runs:
            continue
        run = toy_run_config("bksdm", CONFIG, teacher, run_dir / name, options)
        if max_train_steps is not None:
            run.train.max_train_steps = max_train_steps
        seconds[name] = sum(train_timed(run, [SimpleNamespace(name="train", steps=run.train.max_train_steps)], run_dir / name).values())
    return seconds


def train_lcm_loras(teacher: ToyTeacher, run_dir: Path, lcm_steps: int | None, runs: Sequence[str]) -> dict[str, float]:
    """The toy LCM-LoRA recipe on the small student and on the teacher (those of :data:`LCM_RUNS` in ``runs``);
    returns seconds per run."""
    from distill_diffusion.bench.toy_runs import train_lcm_lora_timed

    models = {"small-lcm-lora": run_dir / "small", "teacher-lcm-lora": teacher.path}
    return {name: train_lcm_lora_timed(models[name], teacher, run_dir / name, lcm_steps) for name in LCM_RUNS if name in runs}


def unet_latency(unet: Any, batch: int, steps: int = 20) -> float:
    """Median seconds of one guided sampling step's UNet call (``batch`` = 2 × images: cond + uncond), without gradients."""
    import torch

    from distill_diffusion.bench.timing import median_seconds
    from distill_diffusion.models.conditioning import placeholder

    size = unet.config.sample_size
    cond = placeholder(unet.config, batch)  # zeros, SDXL's pooled text and time ids too: the timing needs only shapes
    with torch.no_grad():
        z, t = torch.randn(batch, unet.config.in_channels, size, size), torch.full((batch,), 500)
        return median_seconds(lambda: unet(z, t, **cond.unet_kwargs()), steps)


def size_and_latency(models: dict[str, Path]) -> list[dict[str, Any]]:
    """Parameters and per-step latency (one image and 64 images, CFG) of each pipeline folder's UNet."""
    from diffusers import UNet2DConditionModel

    rows = []
    for name, folder in models.items():
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
        rows.append({"name": name, "parameters": sum(p.numel() for p in unet.parameters()),
                     "step_ms_1_image": unet_latency(unet, 2) * 1e3, "step_ms_64_images": unet_latency(unet, 128) * 1e3})
    teacher = rows[0]["parameters"]
    for row in rows:
        row["fewer_parameters"] = 1 - row["parameters"] / teacher
    return rows


def size_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| UNet | parameters | fewer than teacher | step ms, 1 image (CFG) | step ms, 64 images (CFG) |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['parameters']:,} | {100 * r['fewer_parameters']:.0f}% | {r['step_ms_1_image']:.2f} | "
              f"{r['step_ms_64_images']:.1f} |" for r in rows]
    return lines


def run_bksdm_toy(toy: ToyTeacher, output_dir: str | Path, run_dir: str | Path, num_images: int = 1024,
                  guidance_scale: float = TOY_GUIDANCE, cache_dir: str | Path | None = None, max_train_steps: int | None = None,
                  lcm_steps: int | None = None, runs: Sequence[str] = (*RUNS, *LCM_RUNS)) -> dict[str, Any]:
    """Train ``runs`` (default: every run) of ``toy``'s teacher, then benchmark; writes ``output_dir`` (quality results,
    sizes.md, training.json)."""
    import torch

    from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
    from distill_diffusion.bench.specs import PipelineSpec

    run_dir, out = Path(run_dir), Path(output_dir)
    check_runs(runs)
    seconds = {**train_students(toy, run_dir, max_train_steps, runs), **train_lcm_loras(toy, run_dir, lcm_steps, runs)}
    steps, teacher, students = (SAMPLING_STEPS,), str(toy.path), [name for name in RUNS if name in runs]
    specs = [PipelineSpec("teacher", teacher, sampler="ddim", guidance_scale=TEACHER_SWEEP, steps=steps)]
    specs += [PipelineSpec(f"bksdm-{name}", str(run_dir / name), sampler="ddim", steps=steps,
                           guidance_scale=STUDENT_SWEEP if name.startswith("small") else guidance_scale) for name in students]
    lcm = {"teacher-lcm-lora": ("teacher+lcm-lora", teacher), "small-lcm-lora": ("bksdm-small+lcm-lora", str(run_dir / "small"))}
    specs += [PipelineSpec(row, model, lora=str(run_dir / name), sampler="lcm", guidance_scale=1.0, steps=(1, 2, 4))
              for name, (row, model) in lcm.items() if name in runs]
    result = run_quality_benchmark(specs, out, toy_bench_settings(toy.world, num_images, cache_dir))
    sizes = size_and_latency({"teacher": toy.path, **{f"bksdm-{name}": run_dir / name for name in students if name != "small-no-kd"}})
    lines = [*size_table(sizes), "", f"Latency: median of 20 UNet calls, {torch.get_num_threads()} threads, torch {torch.__version__}."]
    (out / "sizes.md").write_text("\n".join(lines) + "\n")
    training = {"config": toy.config(CONFIG), "runs": {name: RUNS.get(name, "tiny/lcm_lora") for name in runs}, "seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1), "sizes": sizes}
    (out / "training.json").write_text(json.dumps(training, indent=2))
    print(Path(result["files"]["markdown"]).read_text())
    print("\n".join(lines))
    print(f"training: {training['total_minutes']} min; " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    return result
