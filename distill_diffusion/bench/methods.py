"""The cross-method benchmark (``distill-diffusion bench methods``): every method's student of one teacher, trained with
its shipped config and scored beside the teacher's training-free samplers, in one table.

Each method declares its students in the method registry (:class:`~distill_diffusion.trainers.methods.registry.ToyStudent`),
so a method added later joins the table without an edit here. On the toy world (the default) every student is its
tiny config; with ``--teacher`` (and ``--train_data_dir``, ``--prompts``, ``--real``, ``--family``) it is the
family's full-size preset on the user's own checkpoint, so a GPU user gets the same table for SD 1.5 or SDXL.

Every student and every teacher row is scored with the same prompts, seeds, N, guidance and feature network
(:func:`~distill_diffusion.bench.quality.run_quality_benchmark`): FID, CLIP score, prompt accuracy and seconds per
image at 1, 2, 4 and 8 steps, beside the training minutes and trainable parameters. The teacher rows are DDIM (leading
and trailing spacing), DPM-Solver++ (2M) with Karras sigmas and UniPC at the same step counts, and DDIM at 25 and 50 steps
with a guidance sweep at 50 (the FID-vs-faithfulness curve each student is read against). Each student trains into
``<run_dir>/<student>-<fingerprint>``, the fingerprint of its resolved config and of its teacher's and data's files: a
run with the same options is reused, an interrupted one resumes, and a changed option trains a new one. Scored rows are
kept beside their images and reused too (:mod:`~distill_diffusion.bench.row_cache`). Torch is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_metric_options, add_toy_run_options
from distill_diffusion.errors import UserError, require

HELP = "every method's student of one teacher (the toy's, or yours): FID/CLIP/accuracy at 1-8 steps, training time, size"
STEPS = (1, 2, 4, 8)
TEACHER_SWEEP = (1.5, 2.0, 3.0, 4.5)
LORA_FILE = "pytorch_lora_weights.safetensors"
#: Options that say where a run writes, not what it learns: left out of its fingerprint.
_WHERE_KEYS = {"train": ("output_dir", "resume_from_checkpoint", "progress_bar", "logging_dir", "report_to", "tracker_project_name"),
               "data": ("cache_dir",)}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    from distill_diffusion.trainers.methods.registry import toy_students

    add_toy_run_options(p, output_dir="benchmarks/results/methods", run_dir="toy_runs/methods")
    p.add_argument("--students", nargs="+", choices=list(toy_students()), default=None, help="the students to train and score (default: all)")
    p.add_argument("--teacher_sweep", type=float, nargs="+", default=list(TEACHER_SWEEP),
                   help="guidance scales of the teacher's 50-step curve that students are read against (the --guidance_scale is always in it)")  # fmt: skip
    p.add_argument("--max_train_steps", type=int, default=None,
                   help="every student's training steps (default: each config's; fewer is a smoke test, not the table)")  # fmt: skip
    p.add_argument("--teacher", default=None, help="your own teacher (diffusers folder or hub id) instead of the toy world's")
    p.add_argument("--family", choices=("sd15", "sdxl"), default=None, help="with --teacher: the presets to train (sd15: SD 1.x/2.x)")
    p.add_argument("--train_data_dir", default=None, help="with --teacher: the training images (imagefolder with captions)")
    p.add_argument("--prompts", default=None, help="with --teacher: the benchmark prompts (text file, JSON list, COCO captions)")
    p.add_argument("--real", default=None, help="with --teacher: real images for FID")
    p.add_argument("--batch_size", type=int, default=8, help="with --teacher: images per generation batch")
    add_metric_options(p)


@dataclass(frozen=True)
class Teacher:
    """The teacher every student distils: its path, training data, and the config each student trains with."""

    path: Path | str
    data: Path
    family: str | None = None  # None: the toy world (tiny configs); else sd15 / sdxl presets
    toy: Any = None  # the ToyTeacher on the toy world

    def config(self, student: Any) -> str:
        """The config ``student`` trains with on this teacher."""
        if self.toy is not None:
            return self.toy.config(student.config)
        require(self.family in student.presets, f"student {student.name!r} has no {self.family} preset; drop it from --students")
        return student.presets[self.family]


def select_students(names: Sequence[str] | None) -> dict[str, tuple[str, Any]]:
    """The chosen students (default: all) by name → (method, student), in registry order; a student trained on another
    student's export needs that one too."""
    from distill_diffusion.trainers.methods.registry import toy_students

    every = toy_students()
    chosen = {n: every[n] for n in every if names is None or n in names}
    for name, (_, student) in chosen.items():
        require(student.base is None or student.base in chosen, f"--students {name} trains on {student.base}; add {student.base} to --students")
    return chosen


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.bench.quality import BenchmarkSettings, toy_bench_settings
    from distill_diffusion.bench.toy_runs import load_toy_teacher

    students = select_students(args.students)  # every check before the toy world is installed or anything trained
    require(args.max_train_steps is None or args.max_train_steps >= 1, f"--max_train_steps {args.max_train_steps}; pass 1 or more")
    for scale in (args.guidance_scale, *args.teacher_sweep):
        check_scale(scale)
    if args.teacher is None:
        require(args.family is None and args.train_data_dir is None and args.real is None and args.prompts is None,
                "--family, --train_data_dir, --prompts and --real go with --teacher (your own teacher); drop them for the toy world")  # fmt: skip
        toy, output_dir, run_dir = load_toy_teacher(args)
        teacher = Teacher(toy.path, toy.data, toy=toy)
        settings = toy_bench_settings(toy.world, args.num_images, args.cache_dir)
    else:
        missing = [f"--{k}" for k in ("family", "train_data_dir", "prompts", "real") if getattr(args, k) is None]
        require(not missing, f"--teacher needs {', '.join(missing)} too (the presets, training images, prompts and real images)")
        require(Path(args.train_data_dir).is_dir(), f"--train_data_dir {args.train_data_dir} is not a folder; pass your training images")
        teacher = Teacher(args.teacher, Path(args.train_data_dir), family=args.family)
        output_dir, run_dir = Path(args.output_dir or "benchmarks/results/methods_own"), Path(args.run_dir or "runs/methods")
        settings = BenchmarkSettings(
            prompts=args.prompts, num_images=args.num_images, real_dir=args.real, fid_feature=args.fid_feature,
            inception_weights=args.inception_weights, clip_model=args.clip_model, resize=args.resize, kid=args.kid,
            stats_cache=args.stats_cache, batch_size=args.batch_size,
        )  # fmt: skip
    run_methods(teacher, students, output_dir, run_dir, settings, args.guidance_scale, args.max_train_steps, args.teacher_sweep)
    return 0


def check_scale(guidance: float) -> None:
    """The teacher's guidance scale, as every sampler takes it."""
    from distill_diffusion.pipelines.samplers import check_guidance

    try:
        check_guidance(guidance)
    except UserError as exc:
        raise UserError(f"--guidance_scale: {exc}") from None


def run_fingerprint(run: Any) -> str:
    """The fingerprint of a run's resolved config: every option but where it writes, with each local path (teacher, data,
    feature network) replaced by the fingerprint of its files, so a moved or re-installed world keeps its runs."""
    from distill_diffusion.bench.row_cache import fingerprint, folder_listing_fingerprint, row_key

    config = run.to_dict()
    for section, keys in _WHERE_KEYS.items():
        for key in keys:
            config[section].pop(key, None)

    def local(value: Any, section: str) -> Any:
        if isinstance(value, dict):
            return {k: local(v, section) for k, v in value.items()}
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            return (folder_listing_fingerprint if section == "data" else fingerprint)(value)
        return value

    return row_key({section: local(body, section) for section, body in config.items()})


@dataclass
class Trained:
    """One trained student: its run folder, export(s), training seconds and trainable parameters."""

    run_dir: Path
    seconds: float
    parameters: int
    rounds: list[tuple[int, Path]]  # (steps, pipeline folder) of a progressive student, else []


def build_student_run(method: str, student: Any, teacher: Teacher, model: Path | str, run_root: Path, assets: Mapping[str, str],
                      max_train_steps: int | None) -> tuple[Any, Path]:  # fmt: skip
    """The student's :class:`RunConfig` on ``model`` (the teacher, or its base student's export) and its run folder."""
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.methods.registry import get_method_class

    config = load_config(teacher.config(student))
    config["model"]["pretrained_model_name_or_path"] = str(model)
    config["data"]["train_data_dir"] = str(teacher.data)
    options = {k: v.format(**assets) if isinstance(v, str) else v for k, v in student.options.items()}
    config["method"] = {**config.get("method", {}), **options}
    if max_train_steps is not None:
        config["train"]["max_train_steps"] = max_train_steps
        config["method"].update(get_method_class(method).stage_length_options(max_train_steps))
    run = build_run_config(method, get_method_class(method), config)
    run_dir = run_root / f"{student.name}-{run_fingerprint(run)[:12]}"
    run.train.output_dir, run.train.resume_from_checkpoint = str(run_dir), "latest"
    return run, run_dir


def train_student(method: str, student: Any, teacher: Teacher, model: Path | str, run_root: Path, assets: Mapping[str, str],
                  max_train_steps: int | None) -> Trained:  # fmt: skip
    """Train (or resume, or reuse) one student; returns where it is and what it cost."""
    from distill_diffusion.bench.toy_runs import train_timed
    from distill_diffusion.models.loading import read_teacher_configs
    from distill_diffusion.trainers.methods.registry import get_method_class

    run, run_dir = build_student_run(method, student, teacher, model, run_root, assets, max_train_steps)
    stages = get_method_class(method).planned_stages(run, read_teacher_configs(run.model))
    rounds = [(stage.sampling_steps, run_dir / stage.name) for stage in stages if stage.export] if student.export == "rounds" else []
    seconds = sum(train_timed(run, stages, run_dir, LORA_FILE if student.export == "lora" else "model_index.json").values())
    weights = run_dir / LORA_FILE if student.export == "lora" else run_dir / "unet" / "diffusion_pytorch_model.safetensors"
    return Trained(run_dir, seconds, count_parameters(weights), rounds)


def count_parameters(path: Path) -> int:
    """Elements in a safetensors file (its tensors' shapes, read from the header)."""
    import math

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def train_students(teacher: Teacher, students: Mapping[str, tuple[str, Any]], run_root: Path,
                   max_train_steps: int | None = None) -> dict[str, Trained]:  # fmt: skip
    """Train every student (a base student before those trained on it); returns them by name."""
    assets = {}
    if teacher.toy is not None and any("{toy_dinov2}" in str(s.options) for _, s in students.values()):
        from distill_diffusion.toy.tiny import save_toy_dinov2

        dinov2 = run_root / "dinov2"
        if not (dinov2 / "config.json").is_file():
            save_toy_dinov2(dinov2)
        assets["toy_dinov2"] = str(dinov2)
    trained: dict[str, Trained] = {}
    for name, (method, student) in sorted(students.items(), key=lambda item: item[1][1].base is not None):
        model = trained[student.base].run_dir if student.base else teacher.path
        print(f"[train] {name} ({method}, {teacher.config(student)})")
        trained[name] = train_student(method, student, teacher, model, run_root, assets, max_train_steps)
    return trained


def teacher_specs(teacher: str, guidance: float, sweep: Sequence[float] = TEACHER_SWEEP) -> list[Any]:
    """The teacher's rows: DDIM at 50 steps over the guidance ``sweep`` (and ``guidance``), and every training-free
    sampler at 1-8 steps (DDIM at 25 too)."""
    from distill_diffusion.bench.specs import PipelineSpec
    from distill_diffusion.bench.step_bars import training_free_specs

    sweep = tuple(sorted({*sweep, guidance}))
    free = [replace(s, steps=(*STEPS, 25)) if s.sampler == "ddim" else s for s in training_free_specs(teacher, guidance, STEPS)]
    return [PipelineSpec("teacher", teacher, sampler="ddim", guidance_scale=sweep, steps=(50,)), *free]


def student_specs(students: Mapping[str, tuple[str, Any]], trained: Mapping[str, Trained], teacher: str,
                  guidance: float) -> tuple[list[Any], dict[str, list[str]]]:  # fmt: skip
    """Each student's rows, and student name → the result pipelines holding them (a progressive student has one per round)."""
    from distill_diffusion.bench.specs import PipelineSpec

    specs, pipelines = [], {}
    for name, (_, s) in students.items():
        t, g = trained[name], guidance if s.guidance is None else s.guidance
        if s.export == "rounds":
            rows = [PipelineSpec(f"{name}-{k}", str(path), sampler=s.sampler, guidance_scale=g, steps=(k,)) for k, path in t.rounds if k in s.steps]
        elif s.export == "lora":
            base = str(trained[s.base].run_dir) if s.base else teacher
            rows = [PipelineSpec(name, base, lora=str(t.run_dir), sampler=s.sampler, guidance_scale=g, steps=s.steps)]
        else:
            rows = [PipelineSpec(name, str(t.run_dir), sampler=s.sampler, guidance_scale=g, steps=s.steps)]
        specs += rows
        pipelines[name] = [r.name for r in rows]
    return specs, pipelines


def run_methods(teacher: Teacher, students: Mapping[str, tuple[str, Any]], output_dir: str | Path, run_dir: str | Path,
                settings: Any, guidance: float, max_train_steps: int | None = None,
                sweep: Sequence[float] = TEACHER_SWEEP) -> dict[str, Any]:  # fmt: skip
    """Train every student, score them beside the teacher, and write the table, plots and grid to ``output_dir``."""
    from distill_diffusion.bench.methods_report import write_methods_report
    from distill_diffusion.bench.quality import run_quality_benchmark

    check_scale(guidance)
    out, run_root = Path(output_dir), Path(run_dir)
    trained = train_students(teacher, students, run_root, max_train_steps)
    specs, pipelines = student_specs(students, trained, str(teacher.path), guidance)
    print("[score] the teacher's samplers and every student (same prompts and seeds)")
    result = run_quality_benchmark([*teacher_specs(str(teacher.path), guidance, sweep), *specs], out, settings)
    info = {name: {"method": method, "config": teacher.config(s), "training_minutes": round(trained[name].seconds / 60, 1),
                   "trainable_parameters": trained[name].parameters, "pipelines": pipelines[name], "run": str(trained[name].run_dir)}
            for name, (method, s) in students.items()}  # fmt: skip
    (out / "training.json").write_text(json.dumps(info, indent=2))
    bars = {name: s for name, (_, s) in students.items() if s.bars} if teacher.toy is not None else {}
    files = write_methods_report(result["rows"], info, out, guidance, bars=bars)
    print(Path(files["markdown"]).read_text())
    return {**result, "students": info, "files": {**result["files"], **files}}


def write_reference_rows(results: str | Path) -> int:
    """Keep the teacher rows of a ``bench methods`` run on the shipped toy world (``results``: its output folder) as the
    world's reference rows (:data:`~distill_diffusion.toy.shipped.REFERENCE_ROWS`); returns how many."""
    from distill_diffusion.bench.row_cache import collect_rows
    from distill_diffusion.bench.step_bars import TRAINING_FREE
    from distill_diffusion.toy.shipped import REFERENCE_ROWS

    entries = collect_rows(results, ["teacher", *TRAINING_FREE])
    require(bool(entries), f"no teacher rows under {results}/images; run distill-diffusion bench methods first")
    REFERENCE_ROWS.write_text(json.dumps(entries, indent=1) + "\n")
    return len(entries)


if __name__ == "__main__":
    import sys

    require(sys.argv[1:2] == ["--write_reference_rows"] and len(sys.argv) == 3, "usage: python -m distill_diffusion.bench.methods --write_reference_rows RESULTS")
    print(f"{write_reference_rows(sys.argv[2])} teacher rows written")
