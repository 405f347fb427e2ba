"""The progressive-distillation benchmarks run end to end on the tiny UNet: the CPU step-vs-passes table and the
SD 1.5 GPU benchmark's code path (on this machine's device), plus the no-GPU error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill_diffusion.errors import UserError
from distill_diffusion.toy.paths import TOY_GUIDANCE
from distill_diffusion.toy.tiny import tiny_unet_config
from distill_diffusion.trainers.methods.progressive import ProgressiveConfig
from distill_diffusion.trainers.methods.progressive.bench_gpu import run_sd15_progressive_benchmark
from distill_diffusion.trainers.methods.progressive.bench_speed import ENGINE_KEY, run_progressive_benchmark

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_cpu_benchmark_times_the_step_against_its_passes(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = run_progressive_benchmark(steps=2, batch_sizes=(2,), output=out)
    row = result["training"][0]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(row["seconds"]) == {"teacher forward + DDIM step, 1st", "teacher forward + DDIM step, 2nd", "student forward+backward", ENGINE_KEY}
    assert row["ratio"] == pytest.approx(row["seconds"][ENGINE_KEY] / row["sum_of_passes"]) and row["ratio"] > 0
    assert "step / sum" in out.with_suffix(".md").read_text()


def test_gpu_benchmark_runs_a_round_step_on_a_tiny_unet(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = run_sd15_progressive_benchmark(batch_size=2, resolution=32, steps=2, mixed_precision="no", output=out,
                                            unet_config=tiny_unet_config(), device=DEVICE)
    assert result["images_per_second"] > 0 and (result["peak_memory_gib"] is None) == (DEVICE == "cpu")
    assert result["settings"]["latent_size"] == 4 and result["settings"]["student_parameters"] > 0
    assert "images/s" in out.with_suffix(".md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_gpu_benchmark_without_a_gpu_is_one_line() -> None:
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        run_sd15_progressive_benchmark()


def test_the_stage_timer_charges_each_step_to_its_stage_and_survives_a_restart(tmp_path: Path) -> None:
    from distill_diffusion.bench.toy_runs import StageTimer
    from distill_diffusion.trainers.methods.base import Stage

    stages = [Stage("guidance", 2), Stage("round-1-2-steps", 1)]
    timer = StageTimer(stages, tmp_path / "seconds.json")
    for step in (1, 2, 3):
        timer(step, {})
    assert set(timer.seconds) == {"guidance", "round-1-2-steps"}
    again = StageTimer(stages, tmp_path / "seconds.json")  # a resumed run adds to what was recorded
    assert again.seconds == timer.seconds


def test_the_toy_stages_read_the_teachers_schedule_and_the_shipped_recipe(tiny_pipeline_dir: Path) -> None:
    from types import SimpleNamespace

    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.methods.progressive import Progressive
    from distill_diffusion.trainers.methods.progressive.bench_toy import CONFIG, toy_stages

    run = build_run_config("progressive", Progressive, load_config(CONFIG))
    stages = toy_stages(SimpleNamespace(path=tiny_pipeline_dir), run)
    # fixed guidance at the toy's reference scale: no guidance stage (docs/progressive.md says why)
    assert run.method_config.guidance == "fixed" and run.method_config.guidance_scale_min == TOY_GUIDANCE
    # the eps teacher's weights in a v student: a conversion stage before the rounds, each exported and sampled at its N
    assert [s.name for s in stages][:2] == ["convert", "round-1-32-steps"] and not stages[0].export
    assert [s.sampling_steps for s in stages[1:]] == [32, 16, 8, 4, 2, 1] and all(s.export for s in stages[1:])


def test_planned_stages_are_the_stages_the_built_method_trains(tiny_pipeline_dir: Path) -> None:
    """The stages a benchmark times from configs alone are the ones the engine runs."""
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.models.loading import load_teacher, read_teacher_configs
    from distill_diffusion.trainers.methods.progressive import Progressive

    config = load_config("tiny/progressive")
    config["model"]["pretrained_model_name_or_path"] = str(tiny_pipeline_dir)
    run = build_run_config("progressive", Progressive, config)
    planned = Progressive.planned_stages(run, read_teacher_configs(run.model))
    assert planned == Progressive(load_teacher(run.model), run.method_config).stages()


@pytest.mark.parametrize("scale", [2.0, 3.5])
def test_a_fixed_guidance_config_is_trained_at_the_benchmarks_guidance(scale: float) -> None:
    from distill_diffusion.trainers.methods.progressive.bench_toy import toy_method_options

    assert toy_method_options(scale) == {"guidance_scale_min": scale}


def test_a_guidance_below_one_is_one_line_before_anything_is_built(capsys, tmp_path: Path) -> None:
    from distill_diffusion.cli import main

    argv = ["bench", "progressive-toy", "--guidance_scale", "0.5", "--output_dir", str(tmp_path / "out"), "--run_dir",
            str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--guidance_scale 0.5: must be >= 1" in err
    assert not any(tmp_path.iterdir())


def test_a_finished_run_at_another_guidance_is_not_reused(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from distill_diffusion.trainers.methods.progressive.bench_toy import check_finished_run

    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("method:\n  guidance: fixed\n  guidance_scale_min: 2.0\n")
    check_finished_run(SimpleNamespace(method_config=ProgressiveConfig(guidance="fixed", guidance_scale_min=2.0)), tmp_path)
    with pytest.raises(UserError, match="trained with guidance fixed at guidance_scale 2.0, not fixed at guidance_scale 3.0; "
                       "pass another --run_dir"):
        check_finished_run(SimpleNamespace(method_config=ProgressiveConfig(guidance="fixed", guidance_scale_min=3.0)), tmp_path)


def test_a_finished_run_saved_with_the_former_w_option_is_reused_at_its_guidance(capsys, tmp_path: Path) -> None:
    """A run saved before ``w_min`` became ``guidance_scale_min`` (w = 1: guidance_scale 2) is the toy run at 2.0."""
    from types import SimpleNamespace

    from distill_diffusion.trainers.methods.progressive.bench_toy import check_finished_run

    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("method:\n  guidance: fixed\n  w_min: 1.0\n")
    check_finished_run(SimpleNamespace(method_config=ProgressiveConfig(guidance="fixed", guidance_scale_min=2.0)), tmp_path)
    assert "warning: method.w_min is deprecated; read as method.guidance_scale_min 2.0" in capsys.readouterr().err
    with pytest.raises(UserError, match="at guidance_scale 2.0, not fixed at guidance_scale 3.0"):
        check_finished_run(SimpleNamespace(method_config=ProgressiveConfig(guidance="fixed", guidance_scale_min=3.0)), tmp_path)
