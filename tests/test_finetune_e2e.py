"""The plain fine-tune through the CLI: train, checkpoint, resume, export, load in stock diffusers, 2 processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_diffusion.cli import main

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes


def finetune_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "finetune", "--config", "tiny/finetune",
            "--pretrained_model_name_or_path", str(teacher), "--train_data_dir", str(data),
            "--output_dir", str(out), "--train_batch_size", "4", "--progress_bar", "false",
            "--validation_steps", "0", "--lr_warmup_steps", "0", *extra]


def unet_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_train_resume_export_and_load(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(finetune_args(tiny_pipeline_dir, toy_data_dir, full, "--max_train_steps", "4", "--checkpointing_steps", "2")) == 0
    assert main(finetune_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "2", "--checkpointing_steps", "2")) == 0
    assert (split / "checkpoint-2").is_dir()
    # the interrupted run continues from its latest checkpoint to step 4
    assert main(finetune_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "4", "--checkpointing_steps", "2",
                              "--resume_from_checkpoint", "latest")) == 0
    state = json.loads((split / "checkpoint-4" / "training_state.json").read_text())
    assert state["train"]["global_step"] == 4
    a, b = unet_weights(full), unet_weights(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    teacher = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(a[k], teacher[k]) for k in a), "training changed nothing"
    assert (full / "config.yaml").is_file() and (full / "README.md").is_file()

    # the export is a stock diffusers pipeline: load and sample without this package
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(full, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3) and float(image.std()) > 0


def test_finetune_loss_decreases(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    from distill_diffusion.config import build_run_config
    from distill_diffusion.trainers.engine.build import build_engine

    run = build_run_config("finetune", __import__("distill_diffusion.trainers.methods.finetune", fromlist=["x"]).FineTuneConfig, {
        "model": {"pretrained_model_name_or_path": str(tiny_pipeline_dir), "local_files_only": True},
        "data": {"train_data_dir": str(toy_data_dir), "resolution": 32},
        "train": {"output_dir": str(tmp_path / "o"), "train_batch_size": 16, "max_train_steps": 30,
                  "learning_rate": 1e-3, "checkpointing_steps": 1000, "progress_bar": False, "adam_weight_decay": 0.0},
    })
    engine = build_engine(run)
    losses = []
    stream = iter(__import__("distill_diffusion.trainers.engine.data_loop", fromlist=["x"]).batch_stream(engine.accelerator, engine.dataloader))
    for _ in range(30):
        losses.append(engine.step([next(stream)])["unet/loss"])
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_counts_steps(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo): step counts and the LR
    schedule stay per optimizer step. (``--cpu --num_processes 2`` would start one process, which the CLI refuses.)"""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "--main_process_port", str(_free_port()),
           "-m", "distill_diffusion.cli",
           *finetune_args(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "3", "--checkpointing_steps", "3",
                          "--lr_scheduler", "linear", "--train_batch_size", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-3" / "training_state.json").read_text())
    assert state["train"]["global_step"] == 3
    assert state["train"]["batches_seen"] == 3  # per process; 2 processes × 2 images = global batch 4
    assert state["num_processes"] == 2
    sched = state["lr_schedulers"]["unet"]
    assert sched["last_epoch"] == 3 and sched["_last_lr"][0] == pytest.approx(0.0)  # linear decay ends at step 3, not 1.5
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_finetune_starts_from_the_stored_fp32_weights_under_bf16(tiny_pipeline_dir: Path) -> None:
    """The frozen teacher is loaded in bf16 under mixed precision; the trainable UNet must not start from its rounding."""
    import torch
    from diffusers import UNet2DConditionModel

    from distill_diffusion.config import ModelConfig
    from distill_diffusion.models.loading import load_teacher
    from distill_diffusion.trainers.methods.finetune import FineTune, FineTuneConfig

    parts = load_teacher(ModelConfig(str(tiny_pipeline_dir), local_files_only=True), torch.bfloat16)
    method = FineTune(parts, FineTuneConfig())
    stored = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").state_dict()
    trained = method.unet.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in stored.items())
