"""LCM on SDXL through the CLI with the shipped SDXL presets (tiny overrides only): train → export → stock diffusers
loads it (a plain script for the LoRA, no import of this package) → ``generate`` samples it as its card says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_generate import generate
from safetensors.torch import load_file

from distill_diffusion.cli import main
from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES
from distill_diffusion.pipelines.card import read_card_sampling
from distill_diffusion.trainers.methods.lcm.method import KOHYA_FILE

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes

LORA_FILE = "pytorch_lora_weights.safetensors"
#: What makes the presets fit a CPU test: the tiny pipeline's 32² images, two steps, fp32, no worker processes.
TINY = ("--resolution", "32", "--max_train_steps", "2", "--mixed_precision", "no", "--train_batch_size", "2",
        "--dataloader_num_workers", "0", "--validation_steps", "0", "--progress_bar", "false", "--learning_rate", "1e-2")


def train(preset: str, teacher: Path, data: Path, out: Path) -> Path:
    assert main(["train", "lcm", "--config", preset, "--pretrained_model_name_or_path", str(teacher),
                 "--train_data_dir", str(data), "--output_dir", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_sdxl_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train("lcm_lora_sdxl", tiny_sdxl_pipeline_dir, toy_data_dir, tmp_path_factory.mktemp("xl_lcm") / "lora")


def test_lora_export_files_and_card(lora_run: Path, tiny_sdxl_pipeline_dir: Path) -> None:
    state = load_file(str(lora_run / LORA_FILE))
    assert state and all(k.startswith("unet.") and ".lora_" in k for k in state)
    kohya = load_file(str(lora_run / KOHYA_FILE))
    assert any(k.startswith("lora_unet_input_blocks_") for k in kohya) and len(kohya) == len(state) * 3 // 2
    scheduler = json.loads((lora_run / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 50
    card = (lora_run / "README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "LCMScheduler" in card and "load_lora_weights" in card
    sampling = read_card_sampling(str(lora_run), "LoRA")
    assert (sampling.sampler, sampling.num_inference_steps, sampling.guidance_scale) == ("lcm", 4, 1.0)
    run = yaml.safe_load((lora_run / "config.yaml").read_text())  # the preset's SDXL settings under the tiny overrides
    assert run["method"]["guidance_scale_min"] == 4.0 and run["method"]["lora_rank"] == 64
    assert run["data"]["cache_latents"] and run["train"]["gradient_checkpointing"] and run["data"]["resolution"] == 32


PLAIN_SCRIPT = r'''
import sys

import numpy as np
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline

base_dir, lora_dir, ref_path, kohya_name = sys.argv[1:5]
pipe = StableDiffusionXLPipeline.from_pretrained(base_dir)
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)


def unet_out():
    g = torch.Generator().manual_seed(1)
    z, c, pooled = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 80, generator=g), torch.randn(2, 40, generator=g)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([999, 259]), encoder_hidden_states=c, added_cond_kwargs=added).sample.numpy()


def sample():
    out = pipe("a red circle", num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
               output_type="np")
    return out.images


before, base_out = sample(), unet_out()
pipe.load_lora_weights(lora_dir)
after, lora_out = sample(), unet_out()
ref = np.load(ref_path)
print("image_change", float(np.abs(after - before).max()))
print("lora_effect", float(np.abs(lora_out - base_out).max()))
print("ref_error", float(np.abs(lora_out - ref).max()))
pipe.unload_lora_weights()
pipe.load_lora_weights(lora_dir, weight_name=kohya_name)
print("kohya_error", float(np.abs(unet_out() - ref).max()))
print("imported_package", "distill_diffusion" in sys.modules)
'''


def reference_output(teacher: Path, lora_file: Path) -> np.ndarray:
    """The trained adapter applied by peft directly (W + alpha/r·BA, rank and alpha 64): what the loader must reproduce."""
    from diffusers import UNet2DConditionModel
    from peft import set_peft_model_state_dict

    from distill_diffusion.models.lora import attach_lora

    unet = UNet2DConditionModel.from_pretrained(teacher / "unet")
    attach_lora(unet, 64, 64, 0.0, DEFAULT_TARGET_MODULES)
    state = {k.removeprefix("unet."): v.float() for k, v in load_file(str(lora_file)).items()}
    assert not set_peft_model_state_dict(unet, state, adapter_name="default").unexpected_keys
    g = torch.Generator().manual_seed(1)
    z, c, pooled = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 80, generator=g), torch.randn(2, 40, generator=g)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return unet(z, torch.tensor([999, 259]), encoder_hidden_states=c, added_cond_kwargs=added).sample.numpy()


def test_plain_diffusers_script_applies_the_sdxl_adapter(lora_run: Path, tiny_sdxl_pipeline_dir: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.npy"
    np.save(ref, reference_output(tiny_sdxl_pipeline_dir, lora_run / LORA_FILE))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(tiny_sdxl_pipeline_dir), str(lora_run), str(ref), KOHYA_FILE],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert found["imported_package"] == "False"
    assert float(found["image_change"]) > 1e-3, "the adapter did not change the images"
    effect, error = float(found["lora_effect"]), float(found["ref_error"])
    assert effect > 1e-3 and error < 1e-4 and effect > 100 * error, found  # every LoRA layer applied, alpha honoured
    assert float(found["kohya_error"]) < 1e-4, found


def test_generate_samples_the_lora_as_its_card_says(lora_run: Path, tiny_sdxl_pipeline_dir: Path, tmp_path: Path) -> None:
    entry = generate(tiny_sdxl_pipeline_dir, tmp_path / "gen", "--lora", str(lora_run))
    assert (entry["sampler"], entry["steps"], entry["guidance_scale"], entry["scheduler"]) == ("lcm", 4, 1.0, "LCMScheduler")
    micro = generate(tiny_sdxl_pipeline_dir, tmp_path / "micro", "--lora", str(lora_run), "--time_ids", "64", "64", "8", "8", "32", "32")
    assert micro["time_ids"] == [64, 64, 8, 8, 32, 32]


def test_full_student_exports_an_sdxl_pipeline(tiny_sdxl_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    out = train("lcm_full_sdxl", tiny_sdxl_pipeline_dir, toy_data_dir, tmp_path / "full")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((out / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 256
    assert (out / "unet_target" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "StableDiffusionXLPipeline + LCMScheduler" in card and "guidance_scale=8.5" in card
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.config.force_zeros_for_empty_prompt
    pipe.set_progress_bar_config(disable=True)
    images = [pipe("a red circle", num_inference_steps=2, guidance_scale=g, generator=torch.Generator().manual_seed(0),
                   output_type="np").images for g in (2.0, 8.5)]
    assert all(np.isfinite(i).all() for i in images) and np.abs(images[0] - images[1]).max() > 0  # w reaches the UNet
    entry = generate(out, tmp_path / "gen")
    assert (entry["sampler"], entry["steps"], entry["guidance_scale"]) == ("lcm-full", 4, 8.5)
