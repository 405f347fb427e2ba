"""`bench consistency`: per-timestep error of LCM-LoRA runs against the guided teacher's ODE, and its bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from distill_diffusion.cli import main
from distill_diffusion.trainers.methods.lcm.bench_consistency import TEACHER_ROW

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes

LORA_FILE = "pytorch_lora_weights.safetensors"


def train_lcm(teacher: Path, data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "lcm", "--config", "tiny/lcm_lora", "--pretrained_model_name_or_path", str(teacher),
                 "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", "2", "--train_batch_size", "2",
                 "--progress_bar", "false", "--validation_steps", "0", "--learning_rate", "1e-2", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_lcm(tiny_pipeline_dir, toy_data_dir, tmp_path_factory.mktemp("consistency") / "run")


def zero_lora_copy(run: Path, dst: Path) -> Path:
    """The same run with every lora_B zeroed: its student is exactly the teacher's conditional prediction."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = load_file(str(run / LORA_FILE))
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()}, str(dst / LORA_FILE),
              metadata=_metadata(run / LORA_FILE))
    return dst


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def test_rows_per_run_and_a_zero_lora_scores_as_the_teacher(lora_run: Path, tmp_path: Path) -> None:
    zero = zero_lora_copy(lora_run, tmp_path / "zero")
    out = tmp_path / "cons.json"
    # guidance 1 (w = 0): the teacher row is its conditional x0, which a zero LoRA reproduces exactly; the
    # zero run comes after the trained one, so a LoRA left loaded would show up as a difference
    assert main(["bench", "consistency", str(lora_run), str(zero), "--num_samples", "6", "--batch_size", "4",
                 "--timesteps", "999", "499", "39", "--guidance", "1", "--output", str(out)]) == 0
    rows = {r["model"]: r["mse"] for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [TEACHER_ROW, str(lora_run), str(zero)]
    assert all(list(m) == ["999", "499", "39"] and all(math.isfinite(v) and v >= 0 for v in m.values()) for m in rows.values())
    for t, v in rows[TEACHER_ROW].items():
        assert rows[str(zero)][t] == pytest.approx(v, rel=1e-5)
    assert any(abs(rows[str(lora_run)][t] - rows[TEACHER_ROW][t]) > 1e-6 * rows[TEACHER_ROW][t] for t in rows[TEACHER_ROW])
    assert "| t = 999 |" in out.with_suffix(".md").read_text()
    again = tmp_path / "again.json"  # a rerun gives the same numbers (the VAE's posterior sample is seeded too)
    assert main(["bench", "consistency", str(lora_run), "--num_samples", "6", "--batch_size", "4",
                 "--timesteps", "999", "499", "39", "--guidance", "1", "--output", str(again)]) == 0
    assert json.loads(again.read_text())["rows"][1]["mse"] == rows[str(lora_run)]


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    capsys.readouterr()
    assert main(["bench", "consistency", *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_runs_are_one_line_errors(capsys, lora_run: Path, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "c.json")
    assert "has no config.yaml" in _error(capsys, str(tmp_path), "--output", out)
    finetune = tmp_path / "ft"
    assert main(["train", "finetune", "--config", "tiny/finetune", "--pretrained_model_name_or_path",
                 str(tiny_pipeline_dir), "--train_data_dir", str(toy_data_dir), "--output_dir", str(finetune),
                 "--max_train_steps", "1", "--train_batch_size", "2", "--progress_bar", "false", "--validation_steps", "0"]) == 0
    assert "is not an LCM-LoRA run" in _error(capsys, str(finetune), "--output", out)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(lora_run, unfinished, ignore=shutil.ignore_patterns(LORA_FILE))
    assert "no pytorch_lora_weights.safetensors" in _error(capsys, str(unfinished), "--output", out)
    other = tmp_path / "other"
    shutil.copytree(lora_run, other)
    config = (other / "config.yaml").read_text().replace(str(tiny_pipeline_dir), str(tmp_path / "elsewhere"))
    (other / "config.yaml").write_text(config)
    assert "different teachers" in _error(capsys, str(lora_run), str(other), "--output", out)
    raw = yaml.safe_load((lora_run / "config.yaml").read_text())
    raw["method"]["guidance_scale_max"] += 1.0
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    assert "different guidance" in _error(capsys, str(lora_run), str(other), "--output", out)
    assert "fewer than --num_samples 100000" in _error(capsys, str(lora_run), "--num_samples", "100000", "--output", out)
    assert "must lie in 1..999" in _error(capsys, str(lora_run), "--timesteps", "0", "--output", out)
    assert not Path(out).exists()
