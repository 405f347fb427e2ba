"""``bench methods``: every registered student of one teacher in one table; runs reused by fingerprint, rows by key."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from distill_diffusion.bench import methods
from distill_diffusion.bench.methods_report import bar_lines, fid_by_steps_lines, table_lines
from distill_diffusion.cli import main
from distill_diffusion.trainers.methods.registry import METHODS, toy_students


def test_every_distillation_method_has_a_student_in_the_table():
    owners = {method for method, _ in toy_students().values()}
    assert owners == set(METHODS) - {"finetune"}
    assert list(methods.select_students(None)) == list(toy_students())
    for _, student in toy_students().values():
        assert {"sd15", "sdxl"} <= set(student.presets), f"{student.name} has no SD preset for --teacher"


@pytest.mark.parametrize("argv, message", [
    (["--students", "bksdm-small+lcm-lora"], "add bksdm-small to --students"),
    (["--max_train_steps", "0"], "--max_train_steps 0"),
    (["--guidance_scale", "nan"], "--guidance_scale"),
    (["--teacher_sweep", "2", "-1"], "--guidance_scale: guidance scale -1.0 is invalid"),
    (["--family", "sd15"], "go with --teacher"),
    (["--teacher", "some/model"], "--teacher needs --family, --train_data_dir, --prompts, --real"),
    (["--teacher", "m", "--family", "sd15", "--train_data_dir", "/no/such", "--prompts", "p.txt", "--real", "r"], "is not a folder"),
])  # fmt: skip
def test_bad_options_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["bench", "methods", "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_max_train_steps_shortens_every_stage_of_a_multi_stage_student(tiny_pipeline_dir, tmp_path):
    from distill_diffusion.models.loading import read_teacher_configs
    from distill_diffusion.trainers.methods.progressive import Progressive

    student = methods.select_students(["progressive"])["progressive"][1]
    teacher = methods.Teacher(tiny_pipeline_dir, tmp_path, toy=SimpleNamespace(config=lambda name: name))
    run, run_dir = methods.build_student_run("progressive", student, teacher, tiny_pipeline_dir, tmp_path, {}, 3)
    stages = Progressive.planned_stages(run, read_teacher_configs(run.model))
    assert {s.steps for s in stages} == {3} and run_dir.parent == tmp_path and run_dir.name.startswith("progressive-")


ROWS = [
    {"pipeline": "teacher", "sampler": "ddim", "steps": 50, "guidance_scale": 2.0, "fid": 0.6, "clip_score": 84.0, "acc_shape": 0.86},
    {"pipeline": "teacher-trailing", "sampler": "ddim-trailing", "steps": 1, "guidance_scale": 2.0, "fid": 4.0, "clip_score": 60.0},
    {"pipeline": "teacher-trailing", "sampler": "ddim-trailing", "steps": 4, "guidance_scale": 2.0, "fid": 0.66, "clip_score": 84.0},
    {"pipeline": "ladd", "sampler": "ladd", "steps": 1, "guidance_scale": 1.0, "fid": 1.0, "clip_score": 80.0},
    {"pipeline": "ladd", "sampler": "ladd", "steps": 4, "guidance_scale": 1.0, "fid": 0.33, "clip_score": 83.0},
    {"pipeline": "progressive-4", "sampler": "progressive", "steps": 4, "guidance_scale": 1.0, "fid": 0.99, "clip_score": 83.0},
]  # fmt: skip
INFO = {"ladd": {"method": "ladd", "pipelines": ["ladd"], "training_minutes": 63.1, "trainable_parameters": 660_000},
        "progressive": {"method": "progressive", "pipelines": ["progressive-4"], "training_minutes": 20.0, "trainable_parameters": 4_000_000}}  # fmt: skip


def test_table_reads_each_student_against_the_best_training_free_sampler_at_its_steps():
    lines = table_lines(ROWS, INFO, 2.0)
    ladd_1 = next(line for line in lines if line.startswith("| ladd | ladd | ladd | 1 |"))
    assert "teacher-trailing (4.00) | 0.25 |" in ladd_1 and "| 63.1 | 0.66 M |" in ladd_1
    prog = next(line for line in lines if "| progressive-4 |" in line)
    assert prog.startswith("| progressive | progressive-4 | progressive | 4 |") and "teacher-trailing (0.66) | 1.50 |" in prog
    short = fid_by_steps_lines(ROWS, INFO, 2.0)
    assert short[2].startswith("| teacher, best training-free sampler | 4.00 (trailing) | – | 0.66 (trailing) | – |")
    assert short[3] == "| ladd | 1.00 | – | 0.33 | – | 63.1 |" and short[4] == "| progressive | – | – | 0.99 | – | 20.0 |"


def test_the_toy_bars_compare_each_student_with_the_teachers_50_steps() -> None:
    def row(name: str, steps: int, fid: float, clip: float, g: float = 1.0) -> dict:
        return {"pipeline": name, "steps": steps, "fid": fid, "clip_score": clip, "guidance_scale": g}

    rows = [row("teacher", 50, 2.0, 80.0, 2.0), row("teacher", 50, 1.0, 80.0, 3.0), row("ladd", 1, 1.4, 73.0), row("ladd", 4, 1.3, 79.0),
            row("add", 1, 1.6, 79.0), row("dmd2", 1, 0.9, 77.0), row("dmd2", 4, 0.95, 80.0), row("progressive-1", 1, 0.95, 80.0)]
    info = {name: {"pipelines": [name]} for name in ("ladd", "add", "dmd2", "lcm-lora")} | {"progressive": {"pipelines": ["progressive-1"]}}
    students = {name: student for name, (_, student) in toy_students().items() if student.bars}
    assert set(students) == {"lcm-lora", "ladd", "add", "dmd2"}
    lines = bar_lines(rows, info, students, 3.0)
    assert "| ladd | 1 | 1.400 | 1.40 | ≤ 1.5× | 0.91 | ≥ 0.9× | yes |" in lines
    assert "| ladd | 4 | 1.300 | 1.30 | ≤ 1.2× | 0.99 | – | no |" in lines
    assert "| add | 1 | 1.600 | 1.60 | ≤ 1.5× | 0.99 | ≥ 0.9× | no |" in lines and not any("lcm-lora" in x for x in lines)
    assert "| lcm-lora | 4 | 1.300 | 1.30 | ≤ 1.5× | 0.99 | ≥ 0.9× | yes |" in bar_lines([*rows, row("lcm-lora", 4, 1.3, 79.0)], info, students, 3.0)
    # DMD2's bars are the teacher's FID itself, and its 1-step row must beat every other student's (a round too)
    assert "| dmd2 | 1 | 0.900 | 0.90 | ≤ 1× | 0.96 | ≥ 0.95× | yes |" in lines
    assert "| dmd2 | 4 | 0.950 | 0.95 | ≤ 0.9× | 1.00 | – | no |" in lines
    rows[-1] = row("progressive-1", 1, 0.85, 80.0)
    assert "| dmd2 | 1 | 0.900 | 0.90 | ≤ 1× | 0.96 | ≥ 0.95× | no |" in bar_lines(rows, info, students, 3.0)
    assert bar_lines(rows, info, students, 7.0) == [] and bar_lines(rows, info, {}, 3.0) == []


@pytest.mark.e2e
def test_bench_methods_trains_scores_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """On a minute-scale toy world: a student of every export kind (a pipeline, one pipeline per round, a LoRA on
    another student), the table, plots and grid; a rerun trains and generates nothing."""
    from distill_diffusion.toy import build

    tiny = replace(build.BUDGETS["small"], num_images=128, vae_steps=2, unet_steps=2, clip_steps=2, calibration_images=0)
    monkeypatch.setitem(build.BUDGETS, "tiny-test", tiny)
    build.ensure_toy_world(cache_dir=tmp_path / "cache", budget="tiny-test", progress=False)
    argv = ["bench", "methods", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), "--run_dir",
            str(tmp_path / "runs"), "--num_images", "40", "--max_train_steps", "2", "--teacher_sweep", "3",
            "--students", "progressive", "bksdm-small", "bksdm-small+lcm-lora"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "out"
    info = json.loads((out / "training.json").read_text())
    assert list(info) == ["progressive", "bksdm-small", "bksdm-small+lcm-lora"]
    assert info["progressive"]["pipelines"] == ["progressive-8", "progressive-4", "progressive-2", "progressive-1"]
    assert info["bksdm-small+lcm-lora"]["trainable_parameters"] < info["bksdm-small"]["trainable_parameters"]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["pipeline"], r["steps"]) for r in rows} >= {("teacher", 50), ("teacher-trailing", 4), ("teacher-ddim", 25),
                                                           ("bksdm-small+lcm-lora", 1), ("progressive-1", 1), ("bksdm-small", 25)}  # fmt: skip
    lora_on_student = next(r for r in rows if r["pipeline"] == "bksdm-small+lcm-lora")
    assert lora_on_student["model"] == info["bksdm-small"]["run"]
    table = (out / "methods.md").read_text()
    assert "| bksdm-small+lcm-lora |" in table and "## Step bars" in table
    for name in ("fid_vs_steps.png", "fid_vs_accuracy.png", "grid_methods.png"):
        assert (out / name).is_file()

    import distill_diffusion.pipelines as pipelines
    from distill_diffusion.trainers.engine import build as engine

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run or a scored row was done again")

    monkeypatch.setattr(engine, "train", refuse)
    monkeypatch.setattr(pipelines, "load_pipeline", refuse)
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == rows
