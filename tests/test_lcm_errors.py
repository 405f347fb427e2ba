"""Bad LCM input: one-line UserError through the CLI (exit 2), nothing exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill_diffusion.cli import main


def run(capsys: pytest.CaptureFixture, teacher: Path, data: Path, out: Path, *extra: str) -> str:
    args = ["train", "lcm", "--config", "tiny/lcm_lora", "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", "1", "--train_batch_size", "2",
            "--progress_bar", "false", "--validation_steps", "0", *extra]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--method.lora_rank", "0"), "lora_rank=0 must be >= 1"),
        (("--method.guidance_scale_min", "10", "--method.guidance_scale_max", "4"), "guidance_scale_min=10.0 is larger than method.guidance_scale_max=4.0"),
        (("--method.solver_substeps", "0"), "solver_substeps=0 must be >= 1"),
        (("--method.loss_type", "l1"), "loss_type"),
        (("--method.target_ema_decay", "1.5"), "target_ema_decay"),
        (("--method.lora_target_modules", "to_q,to_qkv"), "'to_qkv' matches no layer"),
        (("--method.lora_target_modules", "norm1"), "target Linear or Conv2d"),
        (("--method.num_ddim_timesteps", "2000"), "fewer than method.num_ddim_timesteps=2000"),
    ],
)
def test_bad_option(capsys, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path, extra: tuple[str, ...], fragment: str) -> None:
    assert fragment in run(capsys, tiny_pipeline_dir, toy_data_dir, tmp_path / "out", *extra)


def teacher_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_teacher_with_too_few_training_steps(capsys, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    teacher = teacher_copy(tiny_pipeline_dir, tmp_path / "short")
    config_path = teacher / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["num_train_timesteps"] = 40
    config_path.write_text(json.dumps(config))
    line = run(capsys, teacher, toy_data_dir, tmp_path / "out", "--method.num_ddim_timesteps", "50")
    assert "has 40 training timesteps, fewer than method.num_ddim_timesteps=50" in line


def test_sdxl_teacher_gets_the_same_checks(capsys, tiny_sdxl_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """SDXL teachers are distilled now: their bad options fail as an SD teacher's do, nothing about the family."""
    line = run(capsys, tiny_sdxl_pipeline_dir, toy_data_dir, tmp_path / "out", "--method.lora_target_modules", "to_q,to_qkv")
    assert "'to_qkv' matches no layer" in line and "SDXL" not in line
