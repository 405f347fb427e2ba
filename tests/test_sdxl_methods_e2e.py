"""LADD, ADD, DMD2 and progressive distillation on SDXL through the CLI with the shipped SDXL presets (tiny overrides only):
train → export → stock diffusers loads the export in a plain script (no import of this package) → ``generate``
samples it as its card says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers_generate import generate

from distill_diffusion.cli import main

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes

#: What makes any preset fit a CPU test: the tiny pipeline's 32² images, fp32, no worker processes.
TINY = ("--resolution", "32", "--mixed_precision", "no", "--train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--validation_steps", "0",
        "--progress_bar", "false")
#: Per method: two steps and tiny heads, the toy feature network's four blocks at 32², a three-stage plan of one step each.
METHOD_TINY = {
    "ladd": ("--max_train_steps", "2", "--method.head_width", "8", "--method.lora_rank", "4", "--method.lora_alpha", "4"),
    "add": ("--max_train_steps", "2", "--method.head_width", "8", "--method.lora_rank", "4", "--method.lora_alpha", "4", "--method.feature_layers", "1,2,3,4",
            "--method.feature_resolution", "32"),
    "dmd2": ("--max_train_steps", "2", "--method.head_width", "8", "--method.lora_rank", "4", "--method.lora_alpha", "4"),
    "progressive": ("--method.start_steps", "4", "--method.target_steps", "1", "--method.steps_per_round", "1,1",
                    "--method.guidance_steps", "1", "--method.time_cond_proj_dim", "8"),
}


def train(method: str, teacher: Path, data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", method, "--config", f"{method}_sdxl", "--pretrained_model_name_or_path", str(teacher),
                 "--train_data_dir", str(data), "--output_dir", str(out), *TINY, *METHOD_TINY[method], *extra]) == 0
    return out


#: Loads an export with stock diffusers only (a pipeline folder, or the teacher + the LoRA and its scheduler) and samples
#: it at the card's step count: what a user of the export runs.
PLAIN_SCRIPT = r"""
import json, sys
import numpy as np, torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline
export, teacher, steps, guidance = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if teacher:
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher)
    pipe.scheduler = LCMScheduler.from_pretrained(export)
    pipe.load_lora_weights(export)
else:
    pipe = StableDiffusionXLPipeline.from_pretrained(export)
pipe.set_progress_bar_config(disable=True)
seen = []
pipe.unet.register_forward_pre_hook(lambda m, args, kw: seen.append(int(args[1])), with_kwargs=True)
image = pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
print(json.dumps({"timesteps": seen, "finite": bool(np.isfinite(image).all()), "shape": list(image.shape),
                  "scheduler": type(pipe.scheduler).__name__, "time_cond_proj_dim": pipe.unet.config.time_cond_proj_dim,
                  "imported_package": "distill_diffusion" in sys.modules}))
"""


def plain_load(export: Path, teacher: Path | None, steps: int, guidance: float) -> dict:
    """The plain script's report, run without this package on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(export), str(teacher or ""), str(steps), str(guidance)],
                          capture_output=True, text=True, env=env, cwd=export, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["imported_package"] is False and report["finite"] and report["shape"] == [1, 32, 32, 3], report
    return report


def card(out: Path) -> dict:
    return yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["distill_diffusion"]


@pytest.mark.parametrize("method", ["ladd", "add", "dmd2"])
def test_adversarial_lora_on_sdxl_loads_in_stock_diffusers_and_generates_from_its_card(method: str, tiny_sdxl_pipeline_dir: Path,
                                                                                     toy_dir: Path, tmp_path: Path) -> None:
    extra = ("--method.feature_network", str(toy_dir / "dinov2")) if method == "add" else ()
    out = train(method, tiny_sdxl_pipeline_dir, toy_dir / "data", tmp_path / method, *extra)
    run = yaml.safe_load((out / "config.yaml").read_text())  # the preset's SDXL settings under the tiny overrides
    assert run["data"]["cache_latents"] and run["train"]["gradient_checkpointing"] and run["method"]["lora"]
    assert "StableDiffusionXLPipeline.from_pretrained" in (out / "README.md").read_text()
    sampling = card(out)
    assert (sampling["sampler"], sampling["num_inference_steps"], sampling["guidance_scale"]) == ("ladd", 1, 1.0)
    report = plain_load(out, tiny_sdxl_pipeline_dir, 1, 1.0)
    assert report["timesteps"] == [999] and report["scheduler"] == "LCMScheduler"
    entry = generate(tiny_sdxl_pipeline_dir, tmp_path / "gen", "--lora", str(out))
    assert (entry["sampler"], entry["steps"], entry["guidance_scale"]) == ("ladd", 1, 1.0)


def test_progressive_on_sdxl_exports_an_sdxl_pipeline_with_its_w_embedding(tiny_sdxl_pipeline_dir: Path, toy_data_dir: Path,
                                                                           tmp_path: Path) -> None:
    out = train("progressive", tiny_sdxl_pipeline_dir, toy_data_dir, tmp_path / "progressive")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((out / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 8
    assert (out / "round-1-2-steps" / "model_index.json").is_file()
    assert "StableDiffusionXLPipeline.from_pretrained" in (out / "README.md").read_text()
    sampling = card(out)
    assert (sampling["sampler"], sampling["num_inference_steps"], sampling["guidance_scale"]) == ("progressive", 1, 7.5)
    report = plain_load(out, None, 1, 7.5)
    # one UNet call per step: the pipeline feeds the w-embedding and runs no CFG pass
    assert report["timesteps"] == [999] and report["scheduler"] == "DDIMScheduler" and report["time_cond_proj_dim"] == 8
    entry = generate(out, tmp_path / "gen")
    assert (entry["sampler"], entry["steps"], entry["guidance_scale"]) == ("progressive", 1, 7.5)
