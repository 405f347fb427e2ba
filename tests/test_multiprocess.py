"""Two processes on CPU (gloo, ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu``): the LCM target network
is the same on every rank, an epoch is a partition of the data, a 2-process resume is exact, and a checkpoint
resumes on another process count. Each launch costs seconds of start-up, so runs are shared by module fixtures.
"""

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

from distill_diffusion.trainers.engine.build import check_process_count

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes

PROBE = Path(__file__).with_name("two_process_probe.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lcm_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["lcm", "--config", "tiny/lcm_lora", "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
            "--train_batch_size", "2", "--lora_rank", "4", "--lora_alpha", "4", "--progress_bar", "false",
            "--validation_steps", "0", "--lr_scheduler", "constant", "--export_dtype", "fp32", "--guidance_scale_max", "4", *extra]


def launch(processes: int, prefix: Path, args: list[str], *flags: str, tmp: Path) -> dict[int, dict]:
    """Run the probe on ``processes`` processes; returns each rank's record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp / "none.yaml")}
    probe = [str(PROBE), str(prefix), *flags, "--", *args]
    if processes == 1:
        cmd = [sys.executable, *probe]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *probe]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r: json.loads(Path(f"{prefix}_rank{r}.json").read_text()) for r in range(processes)}


@pytest.fixture(scope="module")
def two_proc(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-process LCM-LoRA run with an EMA target (4 steps, checkpoints at 2 and 4), then a 2-process resume from step 2."""
    tmp = tmp_path_factory.mktemp("mp")
    full = launch(2, tmp / "full", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp / "full_out"), "--probe-data", tmp=tmp)
    resumed = launch(2, tmp / "resumed", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp / "resumed_out", "--resume_from_checkpoint",
                                                 str(tmp / "full_out" / "checkpoint-2")), tmp=tmp)
    return {"tmp": tmp, "full": full, "resumed": resumed}


def test_two_processes_really_ran_and_share_the_target_network(two_proc: dict) -> None:
    full = two_proc["full"]
    assert full[0]["num_processes"] == 2
    assert full[0]["target_start"] == full[1]["target_start"]
    assert full[0]["target_end"] == full[1]["target_end"]
    assert full[0]["weights_end"] == full[1]["weights_end"]


def test_an_epoch_is_a_partition_of_the_data(two_proc: dict) -> None:
    seen = [two_proc["full"][r]["data_epoch0"] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 128  # 256 toy images, batch 2 per process, drop_last
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 256


def test_two_process_resume_is_exact(two_proc: dict) -> None:
    a = load_file(str(two_proc["tmp"] / "full_weights.safetensors"))
    b = load_file(str(two_proc["tmp"] / "resumed_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert two_proc["resumed"][0]["target_end"] == two_proc["full"][0]["target_end"]


def test_checkpoint_keys_carry_no_wrapper_prefix(two_proc: dict) -> None:
    keys = load_file(str(two_proc["tmp"] / "full_out" / "checkpoint-2" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("module.") for k in keys)


def test_two_process_checkpoint_resumes_on_one(two_proc: dict, tiny_pipeline_dir: Path, toy_data_dir: Path) -> None:
    tmp = two_proc["tmp"]
    one = launch(1, tmp / "one", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp / "one_out", "--resume_from_checkpoint",
                                         str(tmp / "full_out" / "checkpoint-2")), tmp=tmp)
    assert one[0]["num_processes"] == 1 and (tmp / "one_out" / "checkpoint-4").is_dir()


def test_one_process_checkpoint_resumes_on_two(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    launch(1, tmp_path / "single", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp_path / "single_out", "--max_train_steps", "2"),
           tmp=tmp_path)
    two = launch(2, tmp_path / "grown", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp_path / "grown_out", "--resume_from_checkpoint",
                                               str(tmp_path / "single_out" / "checkpoint-2")), tmp=tmp_path)
    assert two[0]["weights_end"] == two[1]["weights_end"]
    assert (tmp_path / "grown_out" / "checkpoint-4").is_dir()


def test_full_lcm_student_and_target_are_built_alike_on_every_process(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """The full student's new w-projection is random: every rank must draw the same one, and its EMA target too."""
    ranks = launch(2, tmp_path / "full_lcm", lcm_args(tiny_pipeline_dir, toy_data_dir, tmp_path / "o", "--lora", "false"),
                   "--build-only", tmp=tmp_path)
    assert ranks[0]["target_start"] == ranks[1]["target_start"]


def test_dmd2_phases_sharing_one_unet_stay_in_step_on_two_processes(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """DMD2's one-base mode: the generator and fake-score phases train two adapters of one DDP-wrapped UNet (each leaves
    the other's weights without gradients), the head is trained through the fake score's bottleneck; every rank ends
    with the same weights."""
    args = ["dmd2", "--config", "tiny/dmd2", "--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--train_data_dir",
            str(toy_data_dir), "--output_dir", str(tmp_path / "o"), "--max_train_steps", "4", "--train_batch_size", "2",
            "--lora_rank", "4", "--lora_alpha", "4", "--fake_updates", "2", "--head_width", "8", "--progress_bar", "false",
            "--checkpointing_steps", "4", "--cache_latents", "false"]
    ranks = launch(2, tmp_path / "dmd2", args, tmp=tmp_path)
    assert ranks[0]["num_processes"] == 2 and ranks[0]["models_end"] == ranks[1]["models_end"]
    assert (tmp_path / "o" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(
    ("env", "started", "fragment"),
    [
        ({"MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "True"}, 1, "--cpu ignores --num_processes"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, 1, "started 2 processes but each sees 1"),
        ({"WORLD_SIZE": "4"}, 2, "started 4 processes but each sees 2"),
    ],
)
def test_a_launch_with_the_wrong_process_count_is_refused(env: dict, started: int, fragment: str) -> None:
    from distill_diffusion.errors import UserError

    with pytest.raises(UserError, match=fragment.replace("-", r"\-")) as info:
        check_process_count(started, env)
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in str(info.value)


@pytest.mark.parametrize(("env", "started"), [({}, 1), ({"WORLD_SIZE": "2"}, 2), ({"MASTER_ADDR": "x", "ACCELERATE_USE_CPU": "1"}, 2),
                                              ({"WORLD_SIZE": "1"}, 1)])
def test_a_launch_with_the_right_process_count_is_accepted(env: dict, started: int) -> None:
    check_process_count(started, env)


def test_cpu_flag_with_two_processes_exits_2_before_loading(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """The real launcher: ``accelerate launch --cpu --num_processes 2`` runs one process; it must refuse, not train alone."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "distill_diffusion.cli", "train", *lcm_args(tiny_pipeline_dir, toy_data_dir, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--cpu ignores --num_processes" in errors[0], proc.stderr[-2000:]
    # the traceback below our line is accelerate's launcher reporting its child's exit status
    assert "returned non-zero exit status 2" in proc.stderr
    assert not out.exists()


def test_without_a_seed_one_shared_seed_is_drawn_for_models_and_data() -> None:
    from accelerate import Accelerator

    from distill_diffusion.config import TrainConfig
    from distill_diffusion.trainers.engine.build import make_accelerator, shared_seed

    acc: Accelerator = make_accelerator(TrainConfig(seed=None, output_dir="unused"))
    seed = shared_seed(acc, None)
    assert isinstance(seed, int) and acc.dataloader_config.data_seed == seed
    assert shared_seed(acc, 7) == 7
