"""Resume through the CLI: an incompatible or damaged checkpoint is one `error:` line (exit 2) before any model
loads, and nothing new is written; a run that explodes leaves no checkpoint to resume from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill_diffusion.cli import main

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes


def lcm(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "lcm", "--config", "tiny/lcm_lora", "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2",
            "--train_batch_size", "2", "--lora_rank", "4", "--lora_alpha", "4", "--progress_bar", "false",
            "--validation_steps", "0", *extra]


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(lcm(tiny_pipeline_dir, toy_data_dir, out)) == 0
    return out


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def refused(capsys: pytest.CaptureFixture, args: list[str], out: Path) -> str:
    before = snapshot(out)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, f"output before the error line (a model was loaded?):\n{err}"
    assert snapshot(out) == before
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--lora_rank", "8", "--lora_alpha", "4"), "--method.lora_rank 4, this run has 8"),
        (("--lora_alpha", "8"), "--method.lora_alpha 4"),
        (("--lora_target_modules", "to_q,to_k"), "--method.lora_target_modules"),
        (("--use_ema", "true"), "--train.use_ema False"),
        (("--target_ema_decay", "none"), "--method.target_ema_decay 0.95"),
        (("--lora", "false"), "--method.lora True"),
    ],
)
def test_resume_with_different_weight_shaping_options_is_refused(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                                 extra: tuple[str, ...], fragment: str) -> None:
    args = lcm(tiny_pipeline_dir, toy_data_dir, trained, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *extra)
    assert fragment in refused(capsys, args, trained)


def test_resume_with_another_method_is_refused(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path) -> None:
    args = ["train", "finetune", "--config", "tiny/finetune", "--pretrained_model_name_or_path",
            str(tiny_pipeline_dir), "--train_data_dir", str(toy_data_dir), "--output_dir", str(trained), "--progress_bar", "false",
            "--resume_from_checkpoint", "latest"]
    assert "was written by `train lcm`" in refused(capsys, args, trained)


def test_resume_past_max_train_steps_is_refused(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path) -> None:
    """checkpoint-2 with ``--max_train_steps 1`` would train nothing and rewrite the export, card and config.yaml."""
    args = lcm(tiny_pipeline_dir, toy_data_dir, trained, "--max_train_steps", "1", "--resume_from_checkpoint", "latest")
    assert "is at step 2, past --max_train_steps 1" in refused(capsys, args, trained)


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.bin", "method_state.safetensors"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_from_a_damaged_latest_is_refused_before_loading(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                               tmp_path: Path, victim: str, damage: str) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    path = out / "checkpoint-2" / victim
    path.unlink() if damage == "missing" else path.write_bytes(path.read_bytes()[:7])
    args = lcm(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert f"is damaged: {victim}" in refused(capsys, args, out)


@pytest.mark.parametrize("content", ["", "{", "null", '{"train": {"global_step": "x"}}'])
def test_resume_with_a_malformed_training_state_is_refused(capsys, trained: Path, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                           tmp_path: Path, content: str) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    (out / "checkpoint-2" / "training_state.json").write_text(content)
    args = lcm(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "checkpoint-2")
    assert "training_state.json" in refused(capsys, args, out)


def test_exploding_learning_rate_stops_with_no_checkpoint(capsys, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """``--learning_rate 1e30 --checkpointing_steps 1``: the run stops cleanly and leaves nothing to resume from."""
    out = tmp_path / "boom"
    capsys.readouterr()
    assert main(lcm(tiny_pipeline_dir, toy_data_dir, out, "--learning_rate", "1e30", "--checkpointing_steps", "1",
                    "--max_train_steps", "3")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and ("not finite" in err[0] or "non-finite" in err[0]), err
    assert not list(out.glob("checkpoint-*"))
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_checkpoint_records_its_run_and_file_sizes(trained: Path) -> None:
    state = json.loads((trained / "checkpoint-2" / "training_state.json").read_text())
    assert state["run"]["method"]["lora_rank"] == 4 and state["num_processes"] == 1
    assert state["files"]["model.safetensors"] == (trained / "checkpoint-2" / "model.safetensors").stat().st_size


def test_kill_9_during_training_leaves_a_complete_latest(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a run that checkpoints every step, soon after its first checkpoint: `latest` is complete and resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distill_diffusion.trainers.engine import checkpoints as ckpt

    out = tmp_path / "killed"
    args = lcm(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "400", "--checkpointing_steps", "1")
    proc = subprocess.Popen([sys.executable, "-m", "distill_diffusion.cli", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("checkpoint-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps: the kill lands in a step or in a save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    latest = ckpt.resolve_resume("latest", out)
    assert latest is not None and ckpt.verify_checkpoint(latest) == []
    step = ckpt.read_state(latest)["train"]["global_step"]
    resumed = lcm(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", str(step + 1), "--checkpointing_steps", "1",
                  "--resume_from_checkpoint", "latest")
    assert main(resumed) == 0
    assert (out / f"checkpoint-{step + 1}").is_dir() and (out / "pytorch_lora_weights.safetensors").is_file()
