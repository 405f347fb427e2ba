"""LCM through the CLI: train, resume, export; the LoRA loads in a plain diffusers script; the full student samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_guidance_scale_options import W_IN_TEXT
from test_methods_contract import check_card_sampling

from distill_diffusion.cli import main
from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES
from distill_diffusion.trainers.methods.lcm.method import KOHYA_FILE

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes

LORA_FILE = "pytorch_lora_weights.safetensors"


def lcm_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "lcm", "--config", "tiny/lcm_lora",
            "--pretrained_model_name_or_path", str(teacher), "--train_data_dir", str(data),
            "--output_dir", str(out), "--train_batch_size", "2", "--progress_bar", "false",
            "--validation_steps", "0", "--learning_rate", "1e-2",
            "--lr_scheduler", "constant", *extra]  # constant: the split runs below change max_train_steps


LORA_OPTS = ("--method.lora_alpha", "32", "--checkpointing_steps", "2")  # alpha ≠ rank: the metadata must carry it


@pytest.fixture(scope="module")
def lora_run(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lcm") / "full"
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "4", *LORA_OPTS)) == 0
    return out


def test_lora_resume_gives_the_same_adapter(lora_run: Path, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "2", *LORA_OPTS)) == 0
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "4", *LORA_OPTS,
                         "--resume_from_checkpoint", "latest")) == 0
    a, b = load_file(str(lora_run / LORA_FILE)), load_file(str(split / LORA_FILE))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_lora_checkpoint_holds_only_the_adapter(lora_run: Path) -> None:
    checkpoint = sorted(lora_run.glob("checkpoint-*"))[-1]
    keys = load_file(str(checkpoint / "model.safetensors")).keys()
    assert keys and all(".lora_" in k for k in keys)  # the frozen base is the teacher's, reloaded on resume


def test_resume_from_a_checkpoint_missing_weights_is_refused(capsys, lora_run: Path, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(lora_run / "checkpoint-2", out / "checkpoint-2")
    weights = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    save_file(dict(list(weights.items())[1:]), str(out / "checkpoint-2" / "model.safetensors"))
    # a self-consistent file (its size in the checkpoint's manifest updated) that lacks a weight
    state_path = out / "checkpoint-2" / "training_state.json"
    state = json.loads(state_path.read_text())
    state["files"]["model.safetensors"] = (out / "checkpoint-2" / "model.safetensors").stat().st_size
    state_path.write_text(json.dumps(state))
    code = main(lcm_args(tiny_pipeline_dir, toy_data_dir, out, "--max_train_steps", "4", *LORA_OPTS, "--resume_from_checkpoint", "latest"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "lacks 1 trainable weights" in lines[0]
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_lora_export_files(lora_run: Path, tiny_pipeline_dir: Path) -> None:
    with safe_open(str(lora_run / LORA_FILE), framework="pt") as handle:
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
        keys = list(handle.keys())
    assert meta["unet.r"] == 16 and meta["unet.lora_alpha"] == 32
    assert set(meta["unet.target_modules"]) == set(DEFAULT_TARGET_MODULES)
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)
    assert not any("base_model.model" in k for k in keys)
    kohya = load_file(str(lora_run / KOHYA_FILE))
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {32.0}
    assert len(kohya) == len(keys) * 3 // 2  # down, up and alpha per module
    scheduler = json.loads((lora_run / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 50  # the toy config's N
    card = (lora_run / "README.md").read_text()
    assert str(tiny_pipeline_dir) in card and "load_lora_weights" in card and "LCMScheduler" in card
    assert "num_inference_steps=4" in card and "guidance_scale=1.0" in card
    assert "guidance_scale in [2.0, 2.0]" in card and not W_IN_TEXT.search(card)  # the toy config's range, no w


PLAIN_SCRIPT = r'''
import sys

import numpy as np
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline

base_dir, lora_dir, ref_path = sys.argv[1:4]
pipe = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None)
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)


def sample():
    generator = torch.Generator().manual_seed(0)
    return pipe("a red circle", num_inference_steps=4, guidance_scale=1.0, generator=generator, output_type="np").images


def unet_out():
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([999, 259]), encoder_hidden_states=c).sample.numpy()


before, base_out = sample(), unet_out()
pipe.load_lora_weights(lora_dir)
after, lora_out = sample(), unet_out()
ref = np.load(ref_path)
print("image_change", float(np.abs(after - before).max()))
print("lora_effect", float(np.abs(lora_out - base_out).max()))
print("ref_error", float(np.abs(lora_out - ref).max()))
pipe.unload_lora_weights()
pipe.load_lora_weights(lora_dir, weight_name="lcm_lora_kohya.safetensors")
print("kohya_error", float(np.abs(unet_out() - ref).max()))
print("imported_package", "distill_diffusion" in sys.modules)
'''


def reference_output(teacher: Path, lora_file: Path) -> np.ndarray:
    """The adapter applied by peft directly (W + alpha/r·BA with alpha 32, rank 16): what the loader must reproduce."""
    from diffusers import UNet2DConditionModel
    from peft import set_peft_model_state_dict

    from distill_diffusion.models.lora import attach_lora

    unet = UNet2DConditionModel.from_pretrained(teacher / "unet")
    attach_lora(unet, 16, 32, 0.0, DEFAULT_TARGET_MODULES)
    state = {k.removeprefix("unet."): v.float() for k, v in load_file(str(lora_file)).items()}
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    assert not result.unexpected_keys
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([999, 259]), encoder_hidden_states=c).sample.numpy()


def test_plain_diffusers_script_applies_the_adapter(lora_run: Path, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.npy"
    np.save(ref, reference_output(tiny_pipeline_dir, lora_run / LORA_FILE))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(tiny_pipeline_dir), str(lora_run), str(ref)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert found["imported_package"] == "False"
    assert float(found["image_change"]) > 1e-3, "the adapter did not change the images"
    effect, error = float(found["lora_effect"]), float(found["ref_error"])
    assert effect > 1e-3 and error < 1e-4 and effect > 100 * error, found  # every LoRA layer applied, alpha honoured
    assert float(found["kohya_error"]) < 1e-4, found


def test_full_mode_resumes_and_exports_an_lcm_pipeline(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    opts = ("--method.lora", "false", "--learning_rate", "1e-3", "--checkpointing_steps", "1")
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, full, "--max_train_steps", "2", *opts)) == 0
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "1", *opts)) == 0
    assert (split / "checkpoint-1" / "method_state.safetensors").is_file()  # the EMA target network
    assert main(lcm_args(tiny_pipeline_dir, toy_data_dir, split, "--max_train_steps", "2", *opts,
                         "--resume_from_checkpoint", "latest")) == 0
    a = load_file(str(full / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(split / "unet" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    target_a = load_file(str(full / "unet_target" / "diffusion_pytorch_model.safetensors"))
    target_b = load_file(str(split / "unet_target" / "diffusion_pytorch_model.safetensors"))
    assert target_a.keys() == a.keys() and any(not torch.equal(target_a[k], a[k]) for k in a)  # EMA lags the student
    for key in target_a:
        torch.testing.assert_close(target_a[key], target_b[key], msg=key)  # resumed EMA == uninterrupted EMA
    assert json.loads((full / "model_index.json").read_text())["_class_name"] == "LatentConsistencyModelPipeline"
    scheduler = json.loads((full / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 50  # the toy config's N
    assert json.loads((full / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 256
    card = (full / "README.md").read_text()
    assert "guidance_scale=8.5" in card and "guidance embedding" in card and not W_IN_TEXT.search(card)
    check_card_sampling(full, tiny_pipeline_dir, ("lcm-full", 4, 8.5), tmp_path)
    for cls in (LatentConsistencyModelPipeline, StableDiffusionPipeline):
        pipe = cls.from_pretrained(full, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a red circle", num_inference_steps=2, guidance_scale=8.5, generator=torch.Generator().manual_seed(0), output_type="np").images
        assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all() and float(image.std()) > 0
