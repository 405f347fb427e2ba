"""Sharded training (FSDP2 through ``accelerate launch --use_fsdp --fsdp_version 2``) on 2 CPU processes with gloo.

accelerate 1.16 does not shard on CPUs: its state turns only GPU-like launches into FSDP, and a CPU launch with
``--use_fsdp`` silently runs DDP, which the CLI refuses. torch's ``fully_shard`` does shard over gloo, so
``fsdp_probe.py`` switches accelerate's state to FSDP after it is built and everything else runs as on GPUs:
accelerate's FSDP2 ``prepare``, sharded ``save_state``/``load_state``, our engine and methods. A real GPU launch is the
``gpu`` test at the end (benchmarks/gpu_check.sh). The methods with several trainable modules (LADD, ADD: a student
and discriminator heads) come first; LCM-LoRA is the single-module method with a state of its own (its EMA target).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from distill_diffusion.errors import UserError
from distill_diffusion.trainers.engine import sharding
from distill_diffusion.trainers.methods.base import Phase

PROBE = Path(__file__).with_name("fsdp_probe.py")
FSDP = ("--use_fsdp", "--fsdp_version", "2")
DDP = ("--multi_gpu",)
CONFIGS = {"ladd": "tiny/ladd", "add": "tiny/add", "lcm": "tiny/lcm_lora"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(method: str, teacher: Path, out: Path, *extra: str, validation_steps: int = 0) -> list[str]:
    """Two steps, a checkpoint after each. The learning rate is high enough that a wrong update shows in the weights,
    and Adam's ε large enough that its update follows the gradient smoothly: with the default 1e-8 the first steps move
    each weight by ±lr whatever the size of its gradient, so gradients summed in another order (FSDP's reduce-scatter,
    DDP's all-reduce) flip the update of the weights whose gradient is ~0, such as a LoRA's A at B = 0."""
    return [method, "--config", CONFIGS[method], "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(teacher.parent / "data"), "--output_dir", str(out), "--max_train_steps", "2",
            "--checkpointing_steps", "1", "--train_batch_size", "2", "--progress_bar", "false", "--validation_steps", str(validation_steps),
            "--data.cache_latents", "false", "--lr_scheduler", "constant", "--learning_rate", "1e-3", "--adam_epsilon", "1e-2",
            *extra]


def launch(mode: tuple[str, ...], prefix: Path, args: list[str], tmp: Path, processes: int = 2, cpu: bool = True) -> dict:
    """The probe under ``accelerate launch`` (``mode``: FSDP or DDP); returns rank 0's record and the gathered weights.

    A process killed by a signal mid-run (once in CI: SIGSEGV in rank 0 mid-training, while rank 1 waited in a gloo
    collective; not reproduced in 20 launches on a 2-core machine) is a native fault below Python, not an error of
    ours: the run is started once more from an empty output folder. A Python error, or a second crash, fails the test with each process's stack
    (``PYTHONFAULTHANDLER`` prints it for a native crash too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp / "none.yaml"), "PYTHONFAULTHANDLER": "1"}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    for attempt in (1, 2):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *mode,
               str(PROBE), str(prefix), "--", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
        if proc.returncode == 0 or attempt == 2 or not killed_by_signal(proc.stderr):
            break
        shutil.rmtree(args[args.index("--output_dir") + 1], ignore_errors=True)
    assert proc.returncode == 0, failure_report(proc.stderr)
    record = json.loads(Path(f"{prefix}_rank0.json").read_text())
    return {**record, "weights": load_file(f"{prefix}_weights.safetensors")}


def killed_by_signal(stderr: str) -> bool:
    """torchrun's failure summary: the first process to fail ("Root Cause") has a negative exit code (-signal)."""
    return re.search(r"exitcode\s*:\s*-\d+", stderr.rpartition("Root Cause")[2]) is not None


def failure_report(stderr: str) -> str:
    """The native crash's stack (faulthandler's ``Fatal Python error`` block) when there is one, then the end."""
    start = stderr.find("Fatal Python error")
    crash = stderr[start : start + 3000] + "\n...\n" if start >= 0 else ""
    return crash + stderr[-4000:]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=lambda message, key=key: f"{key}: {message}")


def load_lora_export(out: Path, teacher: Path):
    """The export as stock diffusers loads it: the teacher, the LoRA and the scheduler saved beside it."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None)
    pipe.scheduler = LCMScheduler.from_pretrained(out)
    pipe.load_lora_weights(out)
    return pipe


def samples(pipe, steps: int = 1) -> torch.Tensor:
    image = pipe("a red circle", num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    return torch.as_tensor(image)


# ---------------------------------------------------------------------------- without launching


def fake_accelerator(fsdp2: bool = True, **state: object) -> SimpleNamespace:
    """An accelerator that records what each ``prepare`` call was given."""
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=state.get("names"))
    calls: list[tuple] = []

    def prepare(*objects):
        calls.append((objects, plugin.transformer_cls_names_to_wrap))
        return objects if len(objects) > 1 else objects[0]

    from accelerate import DistributedType

    return SimpleNamespace(is_fsdp2=fsdp2, prepare=prepare, calls=calls, state=SimpleNamespace(fsdp_plugin=plugin),
                           distributed_type=DistributedType.FSDP if fsdp2 else DistributedType.MULTI_CPU,
                           num_processes=state.get("num_processes", 2))


class Block(torch.nn.Linear):
    """A layer class the UNet-like module has and the heads do not."""


def test_fsdp2_prepares_each_module_alone_with_its_phases_optimizers() -> None:
    """accelerate's FSDP2 prepare takes one model per call ("Only one model is supported when using FSDP2") and pairs
    the i-th optimizer with the i-th model when it saves them; its layer classes to wrap stick from the first model."""
    unet, heads = torch.nn.Sequential(Block(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 1))
    phases = [Phase("generator", ("unet",)), Phase("discriminator", ("disc",))]
    optimizers = {"generator": "opt_g", "discriminator": "opt_d"}
    acc = fake_accelerator(names=["Block", "BasicTransformerBlock"])
    modules, prepared, loader = sharding.prepare(acc, {"unet": unet, "disc": heads}, phases, optimizers, "loader")
    assert [objects for objects, _ in acc.calls] == [(heads, "opt_d"), (unet, "opt_g"), ("loader",)]
    assert [names for _, names in acc.calls[:2]] == [[], ["Block"]]  # each model wraps the classes it has
    assert acc.state.fsdp_plugin.transformer_cls_names_to_wrap == ["Block", "BasicTransformerBlock"]
    assert modules == {"disc": heads, "unet": unet} and prepared == optimizers and loader == "loader"


def test_without_fsdp2_everything_is_prepared_in_one_call() -> None:
    acc = fake_accelerator(fsdp2=False)
    sharding.prepare(acc, {"unet": "u", "disc": "d"}, [Phase("g", ("unet",)), Phase("d", ("disc",))], {"g": "og", "d": "od"}, "dl")
    assert [objects for objects, _ in acc.calls] == [("d", "u", "og", "od", "dl")]


@pytest.mark.parametrize(("env", "fsdp2", "fragment"), [
    ({"ACCELERATE_USE_FSDP": "true"}, None, "accelerate runs MULTI_CPU here"),
    ({"ACCELERATE_USE_FSDP": "true"}, False, "--fsdp_version 1 is not supported"),
])
def test_an_fsdp_launch_the_engine_would_not_run_as_asked_is_refused(env: dict, fsdp2: bool | None, fragment: str) -> None:
    from accelerate import DistributedType

    acc = fake_accelerator(fsdp2=bool(fsdp2))
    if fsdp2 is None:  # accelerate on CPUs: --use_fsdp dropped, DDP instead
        acc.distributed_type = DistributedType.MULTI_CPU
    else:
        acc.distributed_type = DistributedType.FSDP
    with pytest.raises(UserError, match=fragment):
        sharding.check_sharding(acc, env)


def test_ddp_and_a_single_process_pass_the_fsdp_check() -> None:
    from accelerate import DistributedType

    sharding.check_sharding(fake_accelerator(fsdp2=False), {})
    single = fake_accelerator(fsdp2=False, num_processes=1)
    single.distributed_type = DistributedType.NO
    sharding.check_sharding(single, {"ACCELERATE_USE_FSDP": "true"})


# ---------------------------------------------------------------------------- 2 CPU processes


@pytest.mark.e2e
def test_use_fsdp_on_cpus_is_refused_before_anything_loads(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    """The real launcher: ``ACCELERATE_USE_CPU=1 accelerate launch --use_fsdp`` starts 2 processes that accelerate
    wraps in DDP, not FSDP; each refuses with one line, exit 2, nothing written."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml"), "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *FSDP, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "distill_diffusion.cli", "train", *train_args("lcm", tiny_pipeline_dir, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "--use_fsdp was asked but accelerate runs MULTI_CPU" in errors.pop()
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr)  # torchrun (accelerate's launcher) reporting its children's exit
    assert not out.exists()


@pytest.fixture(scope="module")
def ladd(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LADD-LoRA (a student UNet and discriminator heads, an EMA): 2 steps under FSDP2 with validation images at the
    end, a resume from its step-1 checkpoint under FSDP2, and the same 2 steps under DDP."""
    tmp = tmp_path_factory.mktemp("fsdp_ladd")

    def args(out: str, *extra: str) -> list[str]:
        return train_args("ladd", tiny_pipeline_dir, tmp / out, *extra, validation_steps=2)

    # per-block units with backward simulation: every process must run the same student passes
    per_block = (*FSDP, "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
    fsdp = launch(per_block, tmp / "fsdp", args("fsdp_out"), tmp)
    resumed = launch(per_block, tmp / "resumed", args("resumed_out", "--resume_from_checkpoint", str(tmp / "fsdp_out" / "checkpoint-1")), tmp)
    ddp = launch(DDP, tmp / "ddp", args("ddp_out"), tmp)
    return {"tmp": tmp, "fsdp": fsdp, "resumed": resumed, "ddp": ddp}


@pytest.mark.e2e
def test_ladd_is_sharded_and_accelerate_checkpoints_each_module_and_optimizer(ladd: dict) -> None:
    assert ladd["fsdp"]["distributed_type"] == "DistributedType.FSDP" and ladd["fsdp"]["sharded"] == ["DTensor"]
    assert ladd["ddp"]["distributed_type"] == "DistributedType.MULTI_CPU"
    folder = ladd["tmp"] / "fsdp_out" / "checkpoint-2"
    names = {p.name for p in folder.iterdir()}
    assert {"pytorch_model_fsdp_0", "pytorch_model_fsdp_1", "optimizer_0", "optimizer_1", "ema_generator.safetensors"} <= names


@pytest.mark.e2e
def test_ladd_resumes_under_fsdp_to_the_weights_of_the_uninterrupted_run(ladd: dict) -> None:
    assert_same_weights(ladd["resumed"]["weights"], ladd["fsdp"]["weights"])
    exports = [load_file(str(ladd["tmp"] / f"{run}_out" / "pytorch_lora_weights.safetensors")) for run in ("fsdp", "resumed")]
    assert_same_weights(*exports)


@pytest.mark.e2e
def test_ladd_under_fsdp_trains_the_weights_ddp_trains(ladd: dict) -> None:
    """Every trainable weight of both modules, to float rounding (the gradients are summed in another order): two fp32
    ulps of a weight near 1 (a GroupNorm gain of the heads can end one ulp, 1.2e-7, apart)."""
    assert_same_weights(ladd["fsdp"]["weights"], ladd["ddp"]["weights"], atol=2.5e-7)
    changed = [k for k in ladd["fsdp"]["weights"] if k.startswith("disc.")]
    assert changed  # the heads are in the comparison


@pytest.mark.e2e
def test_ladd_fsdp_export_is_the_ddp_export_and_stock_diffusers_samples_it(ladd: dict, tiny_pipeline_dir: Path) -> None:
    fsdp_out, ddp_out = ladd["tmp"] / "fsdp_out", ladd["tmp"] / "ddp_out"
    assert_same_weights(load_file(str(fsdp_out / "pytorch_lora_weights.safetensors")),
                        load_file(str(ddp_out / "pytorch_lora_weights.safetensors")), atol=1e-6)
    image = samples(load_lora_export(fsdp_out, tiny_pipeline_dir))
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(image).all()
    # validation images come from the unsharded copy too, the same as DDP's
    grids = [np.asarray(Image.open(out / "validation" / "step-2" / "grid.png"), dtype=np.int16) for out in (fsdp_out, ddp_out)]
    assert np.abs(grids[0] - grids[1]).max() <= 1


@pytest.mark.e2e
def test_add_with_exact_r1_trains_under_fsdp_as_under_ddp_and_exports(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    """ADD's exact R1 runs a second backward through the heads, after FSDP2 freed their gathered weights at the end
    of the first (``setStorage: ... out of bounds for storage of size 0``). Kept gathered instead, they must be freed
    before the next forward, which would otherwise use the heads' weights of before the step."""
    dinov2 = str(tiny_pipeline_dir.parent / "dinov2")
    runs = {name: launch(mode, tmp_path / name, train_args("add", tiny_pipeline_dir, tmp_path / f"{name}_out", "--method.feature_network",
                                                          dinov2, "--method.r1_gamma", "1", "--method.r1_approximate_sigma", "0"),
                         tmp_path)
            for name, mode in (("fsdp", FSDP), ("ddp", DDP))}
    assert runs["fsdp"]["distributed_type"] == "DistributedType.FSDP"
    assert_same_weights(runs["fsdp"]["weights"], runs["ddp"]["weights"], atol=1e-7)
    assert (tmp_path / "fsdp_out" / "checkpoint-2" / "pytorch_model_fsdp_1").is_dir()
    assert torch.isfinite(samples(load_lora_export(tmp_path / "fsdp_out", tiny_pipeline_dir))).all()


@pytest.mark.e2e
def test_lcm_lora_target_network_follows_the_sharded_student_as_under_ddp(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    """LCM-LoRA's EMA target θ⁻ is method state over the student's LoRA weights; FSDP2 replaces those parameters, and a
    target kept on the old ones never moved (nor was it swapped in for the target pass), silently."""
    runs = {name: launch(mode, tmp_path / name, train_args("lcm", tiny_pipeline_dir, tmp_path / f"{name}_out", "--guidance_scale_max", "4"), tmp_path)
            for name, mode in (("fsdp", FSDP), ("ddp", DDP))}
    fsdp, ddp = runs["fsdp"]["weights"], runs["ddp"]["weights"]
    assert any(k.startswith("method.target.") for k in fsdp)
    assert_same_weights(fsdp, ddp, atol=1e-7)
    saved = [load_file(str(tmp_path / f"{name}_out" / "checkpoint-2" / "method_state.safetensors")) for name in runs]
    assert_same_weights(*saved, atol=1e-7)


# ---------------------------------------------------------------------------- GPUs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_fsdp_on_gpus_trains_resumes_exactly_and_exports(precision: str, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    """A real ``accelerate launch --use_fsdp --fsdp_version 2`` (NCCL, one process per GPU, up to 2) of LADD-LoRA with
    per-block wrapping, in fp32 and bf16: trains, checkpoints, resumes to the same weights, exports a loadable LoRA."""
    processes = min(2, torch.cuda.device_count())
    mode = (*FSDP, "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--mixed_precision", precision)
    extra = ("--mixed_precision", precision, "--method.backward_simulation", "false")
    full = launch(mode, tmp_path / "full", train_args("ladd", tiny_pipeline_dir, tmp_path / "full_out", *extra), tmp_path,
                  processes=processes, cpu=False)
    resumed = launch(mode, tmp_path / "resumed", train_args("ladd", tiny_pipeline_dir, tmp_path / "resumed_out", *extra,
                                                           "--resume_from_checkpoint", str(tmp_path / "full_out" / "checkpoint-1")),
                     tmp_path, processes=processes, cpu=False)
    assert full["distributed_type"] == "DistributedType.FSDP" and full["units"]["unet"] > 2
    assert_same_weights(resumed["weights"], full["weights"])
    assert torch.isfinite(samples(load_lora_export(tmp_path / "full_out", tiny_pipeline_dir))).all()
