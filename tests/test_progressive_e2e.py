"""`train progressive` through the CLI on the tiny pipeline: a three-stage plan (guidance, 4 → 2 → 1 steps), an export
per round that a plain diffusers script samples at its step count, the shipped config's fixed guidance, and one-line
refusals of bad plans."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_guidance_scale_options import W_IN_TEXT
from test_resume_errors import refused

from distill_diffusion.cli import main

pytestmark = pytest.mark.e2e


def progressive(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "progressive", "--config", "tiny/progressive", "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(data), "--output_dir", str(out), "--train_batch_size", "2", "--progress_bar", "false",
            "--start_steps", "4", "--target_steps", "1", "--steps_per_round", "2,1", "--guidance_steps", "1",
            "--guidance", "distill", "--time_cond_proj_dim", "8", "--checkpointing_steps", "100", *extra]


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progressive") / "run"
    assert main(progressive(tiny_pipeline_dir, toy_data_dir, out, "--checkpoints_total_limit", "5")) == 0
    return out


#: Samples an export with stock diffusers only: no import of this project.
PLAIN_SCRIPT = """
import json, sys
import numpy as np, torch
from diffusers import StableDiffusionPipeline
folder, steps = sys.argv[1], int(sys.argv[2])
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
seen = []
pipe.unet.register_forward_pre_hook(lambda m, args, kw: seen.append(int(args[1])), with_kwargs=True)
image = pipe("a red circle", num_inference_steps=steps, guidance_scale=3.0, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
print(json.dumps({"timesteps": seen, "finite": bool(np.isfinite(image).all()), "shape": list(image.shape),
                  "prediction_type": pipe.scheduler.config.prediction_type}))
"""


def test_each_stage_is_checkpointed_under_its_name_and_each_round_exported(trained: Path) -> None:
    names = sorted((p.name for p in trained.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    assert names == ["checkpoint-1-guidance", "checkpoint-3-round-1-2-steps", "checkpoint-4-round-2-1-steps"]
    for folder in ("round-1-2-steps", "round-2-1-steps"):
        assert (trained / folder / "model_index.json").is_file() and (trained / folder / "README.md").is_file()
    # the run's output is the last round's student
    weights = "unet/diffusion_pytorch_model.safetensors"
    last, out = load_file(trained / "round-2-1-steps" / weights), load_file(trained / weights)
    assert all((last[k] == out[k]).all() for k in last)
    card = (trained / "README.md").read_text()
    # the guidance-input student at validation_guidance_scale, by default guidance_scale_min (tiny/progressive's 2.0)
    assert "num_inference_steps=1" in card and "guidance_scale=2.0" in card
    assert "trained for guidance_scale in [2.0, 5.0]" in card and not W_IN_TEXT.search(card)
    state = json.loads((trained / "checkpoint-3-round-1-2-steps" / "training_state.json").read_text())
    assert state["train"]["stage"] == 2 and state["run"]["method"]["steps_per_round"] == [2, 1]


def test_validation_samples_each_round_at_its_own_step_count(monkeypatch, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                           tmp_path: Path) -> None:
    """Guidance stage (step 1), round 1 at 2 steps (steps 2-3), round 2 at 1 step (step 4): validated after every step."""
    from distill_diffusion.trainers.engine import validation

    seen: dict[int, int] = {}
    monkeypatch.setattr(validation, "run_validation",
                        lambda method, cfg, accelerator, step: seen.update({step: method.validation_call_kwargs()["num_inference_steps"]}))
    args = progressive(tiny_pipeline_dir, toy_data_dir, tmp_path / "run", "--validation_steps", "1", "--validation_prompts", "a red circle")
    assert main(args) == 0
    # the w-student at the first teacher's 4 steps after the guidance stage; round 1's student at 2 steps while it
    # trains (step 2) and when it ends (step 3); round 2's at 1
    assert seen == {1: 4, 2: 2, 3: 2, 4: 1}


@pytest.mark.parametrize(("folder", "steps", "timesteps"), [("round-1-2-steps", 2, [999, 499]), ("round-2-1-steps", 1, [999])])
def test_a_plain_diffusers_script_samples_each_round_on_its_grid(trained: Path, folder: str, steps: int, timesteps: list[int]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(trained / folder), str(steps)], capture_output=True,
                            text=True, env=env, cwd=trained, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"timesteps": timesteps, "finite": True, "shape": [1, 32, 32, 3], "prediction_type": "v_prediction"}


@pytest.mark.parametrize(("extra", "fragment"), [
    (("--target_steps", "3"), "not reachable by halving"),
    (("--start_steps", "2048", "--target_steps", "512"), "more than the teacher's 1000 training timesteps"),
    (("--prediction_type", "epsilon"), "unstable at high noise"),
    (("--steps_per_round", "1,2,3"), "one per round (2 rounds"),
    (("--guidance", "sometimes"), "method.guidance"),
    (("--convert_steps", "-1"), "method.convert_steps=-1 must be >= 0"),
])
def test_a_bad_plan_is_one_line_before_loading(capsys, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                               extra: tuple[str, ...], fragment: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    assert fragment in refused(capsys, progressive(tiny_pipeline_dir, toy_data_dir, out, *extra), out)
    assert not any(out.iterdir())


@pytest.mark.parametrize(("extra", "fragment"), [
    (("--steps_per_round", "2,2"), "--method.steps_per_round 2,1"),
    (("--target_steps", "2", "--steps_per_round", "2"), "--method.target_steps 1"),
    (("--guidance", "fixed"), "--method.guidance distill"),
    (("--guidance_scale_min", "1.5"), "--method.guidance_scale_min 2.0"),
])
def test_resume_with_a_changed_round_plan_is_refused(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                     extra: tuple[str, ...], fragment: str) -> None:
    args = progressive(tiny_pipeline_dir, toy_data_dir, trained, "--resume_from_checkpoint", "latest", *extra)
    assert fragment in refused(capsys, args, trained)


def test_the_shipped_fixed_guidance_has_no_guidance_stage_and_builds_w_into_the_student(tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = progressive(tiny_pipeline_dir, toy_data_dir, out)
    args[args.index("distill")] = "fixed"  # tiny/progressive's own guidance
    assert main([*args, "--convert_steps", "1"]) == 0
    # the eps teacher's copy first learns the v student's parameterisation: a one-step conversion stage, not exported
    # (its checkpoint-1-convert dropped by the config's checkpoints_total_limit 2)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3-round-1-2-steps", "checkpoint-4-round-2-1-steps"]
    assert not (out / "convert").exists()
    card = (out / "README.md").read_text()
    assert "guidance_scale=1.0" in card and "the teacher's guidance_scale 2.0 is built into the student" in card
    assert not W_IN_TEXT.search(card)
    assert json.loads((out / "unet" / "config.json").read_text())["time_cond_proj_dim"] is None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(out), "1"], capture_output=True, text=True, env=env, cwd=out,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["timesteps"] == [999]


def _former_w_options(method: dict) -> dict:
    """A method section as runs saved it before guidance_scale_min/max: the LCM weights w = guidance_scale − 1."""
    renamed = {"guidance_scale_min": "w_min", "guidance_scale_max": "w_max"}
    return {renamed.get(k, k): v - 1 if k in renamed else v for k, v in method.items()}


def test_a_run_saved_with_the_former_w_options_resumes_to_the_same_weights(capsys, trained: Path, tmp_path: Path) -> None:
    """config.yaml and checkpoints holding w_min/w_max: read once as guidance_scale = w + 1 (one warning line each), the
    resume checks pass, and the last round trains to the uninterrupted run's weights bit for bit."""
    import yaml

    old = tmp_path / "run"
    shutil.copytree(trained, old)
    shutil.rmtree(old / "checkpoint-4-round-2-1-steps")
    config = yaml.safe_load((old / "config.yaml").read_text())
    (old / "config.yaml").write_text(yaml.safe_dump({**config, "method": _former_w_options(config["method"])}, sort_keys=False))
    for state_file in old.glob("checkpoint-*/training_state.json"):
        state = json.loads(state_file.read_text())
        state["run"]["method"] = _former_w_options(state["run"]["method"])
        state_file.write_text(json.dumps(state))
    capsys.readouterr()
    args = ["train", "progressive", "--config", str(old / "config.yaml"), "--output_dir", str(old), "--resume_from_checkpoint",
            "latest", "--progress_bar", "false"]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "is deprecated" in line]
    assert warnings == ["warning: method.w_min is deprecated; read as method.guidance_scale_min 2.0 (guidance_scale = w + 1); "
                        "write guidance_scale_min: 2.0 instead",
                        "warning: method.w_max is deprecated; read as method.guidance_scale_max 5.0 (guidance_scale = w + 1); "
                        "write guidance_scale_max: 5.0 instead"]
    saved = yaml.safe_load((old / "config.yaml").read_text())["method"]
    assert (saved["guidance_scale_min"], saved["guidance_scale_max"]) == (2.0, 5.0) and "w_min" not in saved
    weights = "unet/diffusion_pytorch_model.safetensors"
    resumed, uninterrupted = load_file(old / weights), load_file(trained / weights)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
