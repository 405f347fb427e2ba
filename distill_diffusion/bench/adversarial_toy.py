"""The few-step toy benchmark (``distill-diffusion bench adversarial-toy``): the LADD, ADD and DMD2 students beside the
teacher and the LCM-LoRA, at 1, 2 and 4 steps.

Sauer et al. compare their 1-step students with LCM at 1-4 steps and with the teacher at 50 steps (ADD, arXiv:2311.17042,
Fig. 5-7; LADD, arXiv:2403.12015, §4), as do Yin et al. (DMD2, arXiv:2405.14867, Tab. 2-3); this is that table on the toy world, in the ``bench quality`` format (FID,
CLIP score, prompt accuracy), same prompts and seeds for every row. The teacher sweeps guidance at 50 DDIM steps, so
each student is also read against the teacher's FID-vs-faithfulness curve. Each student is the shipped tiny config
(``tiny/ladd``, ``tiny/add``, ``tiny/dmd2``, the quickstart's ``tiny/lcm_lora``) with only paths and step counts changed; every run
resumes where it stopped, and its seconds are kept in ``<run_dir>/<run>/stage_seconds.json``. ``bars.md`` checks the
bars (:data:`BARS`: LADD's and ADD's 1-step FID ≤ 1.5× the teacher's 50-step FID at its default guidance, CLIP within
10%, 4-step ≤ 1.2×; DMD2's 1-step ≤ 1.0× and better than every other 1-step student, CLIP within 5%, 4-step ≤ 0.9×); and
every student's :mod:`~distill_diffusion.bench.step_bars` (more steps never worse, no worse than the teacher's best
training-free sampler at equal steps). It compares methods, so it lives in ``bench/`` rather than in one
method's package; torch is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distill_diffusion.bench.options import add_toy_run_options
from distill_diffusion.toy.paths import TOY_GUIDANCE, ToyTeacher

HELP = "LADD, ADD and DMD2 on the toy world at 1/2/4 steps beside the teacher (50 steps, guidance sweep) and the LCM-LoRA"
LORA_FILE = "pytorch_lora_weights.safetensors"
#: Adversarial runs: name → (method, config).
RUNS = {"ladd": ("ladd", "tiny/ladd"), "add": ("add", "tiny/add"), "dmd2": ("dmd2", "tiny/dmd2")}
#: The students it can train and score: the adversarial runs and the LCM-LoRA.
STUDENTS = (*RUNS, "lcm-lora")
STUDENT_STEPS = (1, 2, 4)
TEACHER_STEPS = 50
TEACHER_SWEEP = (1.5, 2.0, 3.0, 4.5)
#: Each student's bars: (steps, FID ratio to the teacher's 50 steps at most, CLIP ratio at least). DMD2 claims more than
#: the GAN-only students (DMD2 §5: 1-step quality at the teacher's level), so its bars are the teacher's FID itself.
#: The LCM-LoRA is read against the GAN students' bars.
_GAN_BARS = ((1, 1.5, 0.9), (4, 1.2, None))
BARS = {"ladd": _GAN_BARS, "add": _GAN_BARS, "dmd2": ((1, 1.0, 0.95), (4, 0.9, None)), "lcm-lora": _GAN_BARS}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_toy_run_options(p, output_dir="benchmarks/results/toy_quality/adversarial", run_dir="toy_runs/adversarial")
    for name, config in (*((n, c) for n, (_, c) in RUNS.items()), ("lcm", "tiny/lcm_lora")):
        p.add_argument(f"--{name}_steps", type=int, default=None, help=f"training steps (default: the {config} config's)")
    p.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS),
                   help="the students to train and score beside the teacher (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.toy_runs import load_toy_teacher

    steps = {**{name: getattr(args, f"{name}_steps") for name in RUNS}, "lcm-lora": args.lcm_steps}
    teacher, output_dir, run_dir = load_toy_teacher(args)
    run_adversarial_toy(teacher, output_dir, run_dir, args.num_images, args.guidance_scale, args.cache_dir, steps, args.students)
    return 0


def train_students(teacher: ToyTeacher, run_dir: Path, steps: dict[str, int | None], students: Sequence[str] = STUDENTS) -> dict[str, float]:
    """Train (or resume, or reuse) ``students`` (LADD, ADD, DMD2, the LCM-LoRA) of ``teacher``; returns seconds per run."""
    from distill_diffusion.bench.toy_runs import toy_run_config, train_lcm_lora_timed, train_timed
    from distill_diffusion.toy.tiny import save_toy_dinov2

    dinov2 = run_dir / "dinov2"
    if not (dinov2 / "config.json").is_file():
        save_toy_dinov2(dinov2)
    seconds = {}
    for name, (method, config) in RUNS.items():
        if name not in students:
            continue
        run = toy_run_config(method, config, teacher, run_dir / name, {"feature_network": str(dinov2)} if method == "add" else None)
        if steps.get(name) is not None:
            run.train.max_train_steps = steps[name]
        stage = SimpleNamespace(name="train", steps=run.train.max_train_steps)
        seconds[name] = sum(train_timed(run, [stage], run_dir / name, done_file=LORA_FILE).values())
    if "lcm-lora" in students:
        seconds["lcm-lora"] = train_lcm_lora_timed(teacher.path, teacher, run_dir / "lcm-lora", steps.get("lcm-lora"))
    return seconds


def bar_lines(rows: list[dict[str, Any]], guidance: float) -> list[str]:
    """The bars table: each student's FID and CLIP at 1 and 4 steps against the teacher's at 50 steps; DMD2's 1-step row
    must also beat every other student's 1-step FID (DMD2's claim over the GAN-only and consistency students)."""
    teacher = next(r for r in rows if r["pipeline"] == "teacher" and r["guidance_scale"] == guidance)
    lines = [f"Teacher, {TEACHER_STEPS} DDIM steps, guidance {guidance:g}: FID {teacher['fid']:.3f}, CLIP {teacher['clip_score']:.1f}.", "",
             "| student | steps | FID | FID / teacher | bar | CLIP / teacher | bar | met |", "|---|---|---|---|---|---|---|---|"]
    for name, bars in BARS.items():
        for steps, fid_bar, clip_bar in bars:
            row = next((r for r in rows if r["pipeline"] == name and r["steps"] == steps), None)
            if row is None:
                continue
            fid, clip = row["fid"] / teacher["fid"], row["clip_score"] / teacher["clip_score"]
            met = fid <= fid_bar and (clip_bar is None or clip >= clip_bar)
            if name == "dmd2" and steps == 1:
                met = met and all(row["fid"] < r["fid"] for r in rows if r["steps"] == 1 and r["pipeline"] in (*RUNS, "lcm-lora") and r is not row)
            lines.append(f"| {name} | {steps} | {row['fid']:.3f} | {fid:.2f} | ≤ {fid_bar} | {clip:.2f} | "
                         f"{'≥ ' + str(clip_bar) if clip_bar else '-'} | {'yes' if met else 'no'} |")
    return lines


def run_adversarial_toy(toy: ToyTeacher, output_dir: str | Path, run_dir: str | Path, num_images: int = 1024,
                        guidance_scale: float = TOY_GUIDANCE, cache_dir: str | Path | None = None,
                        steps: dict[str, int | None] | None = None, students: Sequence[str] = STUDENTS) -> dict[str, Any]:
    """Train ``students`` (default: every run) of ``toy``'s teacher, then benchmark them beside it; writes
    ``output_dir`` (quality results, bars.md, training.json)."""
    from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
    from distill_diffusion.bench.specs import PipelineSpec
    from distill_diffusion.bench.step_bars import step_bar_lines, training_free_specs

    run_dir, out = Path(run_dir), Path(output_dir)
    seconds = train_students(toy, run_dir, steps or {}, students)
    teacher = str(toy.path)
    sweep = tuple(sorted({*TEACHER_SWEEP, guidance_scale}))
    specs = [PipelineSpec("teacher", teacher, sampler="ddim", guidance_scale=sweep, steps=(TEACHER_STEPS,)),
             *training_free_specs(teacher, guidance_scale, STUDENT_STEPS)]
    if "lcm-lora" in students:
        specs.append(PipelineSpec("lcm-lora", teacher, lora=str(run_dir / "lcm-lora"), sampler="lcm", guidance_scale=1.0, steps=STUDENT_STEPS))
    specs += [PipelineSpec(name, teacher, lora=str(run_dir / name), sampler="ladd", guidance_scale=1.0, steps=STUDENT_STEPS)
              for name in RUNS if name in students]
    result = run_quality_benchmark(specs, out, toy_bench_settings(toy.world, num_images, cache_dir))
    lines = [*bar_lines(result["rows"], guidance_scale), "", *step_bar_lines(result["rows"], {n: [n] for n in students})]
    (out / "bars.md").write_text("\n".join(lines) + "\n")
    configs = {name: toy.config(config) for name, (_, config) in RUNS.items()} | {"lcm-lora": toy.config("tiny/lcm_lora")}
    training = {"runs": {name: configs[name] for name in students}, "steps": steps or {},
                "seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1)}
    (out / "training.json").write_text(json.dumps(training, indent=2))
    print(Path(result["files"]["markdown"]).read_text())
    print("\n".join(lines))
    print("training: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    return result
