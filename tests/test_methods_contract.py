"""Every method in the registry, through the CLI on the tiny pipeline: two steps, a checkpoint, a resume, the
export, and the export loaded and sampled by stock diffusers. A new method gets this test by shipping its tiny
config (``distill_diffusion/configs/tiny/NAME.yaml`` with ``method_name: NAME``; the first test fails until it does)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from distill_diffusion.cli import main
from distill_diffusion.config import config_names, load_config
from distill_diffusion.trainers.methods.registry import METHODS

pytestmark = pytest.mark.e2e

#: The shipped tiny config each method trains with on the toy world, by the method it names (the SD toy teacher's: the
#: ``_xl`` ones are for the toy SDXL teacher).
TINY_CONFIGS = {load_config(name)["method_name"]: name for name in config_names()
                if name.startswith("tiny/") and not name.endswith("_xl")}
#: Methods whose run is a plan of stages (its length set by the method, not --max_train_steps): a three-stage plan.
STAGED_ARGS = {"progressive": ["--method.start_steps", "4", "--method.target_steps", "1", "--method.steps_per_round", "1",
                               "--method.guidance", "distill", "--method.guidance_steps", "1", "--method.time_cond_proj_dim", "8"]}
#: (sampler, num_inference_steps, guidance_scale) each shipped method's export records in its model card with its tiny
#: config, pinned so that a change shows: LADD and ADD sample with LADD's sampler at their fewest trained steps, BK-SDM
#: and the fine-tune as their teacher; the staged progressive run is guidance-conditioned (1 step, the tiny config's
#: guidance 2). A new method needs no entry: its card must name a known sampler, and generate must follow it.
CARD_SAMPLING = {"finetune": ("ddim", 50, 7.5), "bksdm": ("ddim", 50, 7.5), "lcm": ("lcm", 4, 1.0), "ladd": ("ladd", 1, 1.0),
                 "add": ("ladd", 1, 1.0), "progressive": ("progressive", 1, 2.0)}


def test_every_registered_method_has_a_tiny_config() -> None:
    assert set(TINY_CONFIGS) == set(METHODS) and set(CARD_SAMPLING) <= set(METHODS)


def train(method: str, teacher: Path, data: Path, out: Path, steps: int, *extra: str) -> None:
    args = ["train", method, "--config", TINY_CONFIGS[method], "--pretrained_model_name_or_path", str(teacher),
            "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", str(steps),
            "--checkpointing_steps", "1", "--train_batch_size", "2", "--progress_bar", "false", "--validation_steps", "0", *extra]
    assert main(args) == 0


def load_export(out: Path, teacher: Path):
    """The export as a stock diffusers pipeline: a pipeline folder, or the teacher plus a LoRA."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    if (out / "model_index.json").is_file():
        return DiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert (out / "pytorch_lora_weights.safetensors").is_file(), sorted(p.name for p in out.iterdir())
    pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None)
    pipe.load_lora_weights(out)
    return pipe


def check_card_sampling(out: Path, teacher: Path, expected: tuple[str, int, float] | None, tmp_path: Path) -> None:
    """The export's card records a known sampler, its steps and guidance (``expected`` where pinned), and ``generate``
    without flags samples with them."""
    from distill_diffusion.pipelines.samplers import SAMPLERS

    matter = (out / "README.md").read_text().split("---\n")[1]
    entry = yaml.safe_load(matter)["distill_diffusion"]
    recorded = (entry["sampler"], entry["num_inference_steps"], entry["guidance_scale"])
    assert recorded[0] in SAMPLERS and recorded[1] >= 1 and recorded == (expected or recorded), entry
    expected = recorded
    lora = (out / "pytorch_lora_weights.safetensors").is_file()
    model = ["--model", str(teacher), "--lora", str(out)] if lora else ["--model", str(out)]
    images = tmp_path / "generated"
    assert main(["generate", *model, "--prompt", "a red circle", "--output_dir", str(images), "--device", "cpu"]) == 0
    made = json.loads((images / "manifest.jsonl").read_text().splitlines()[0])
    assert (made["sampler"], made["steps"], made["guidance_scale"]) == expected, made


def sample(pipe) -> None:
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape[0] == 1 and torch.isfinite(torch.as_tensor(image)).all()


@pytest.mark.parametrize("method", sorted(set(METHODS) - set(STAGED_ARGS)))
def test_method_trains_resumes_exports_and_loads_in_diffusers(method: str, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / method
    # a method's extra model from the toy world (ADD's feature network: toy init writes it beside the teacher)
    extra = ["--method.feature_network", str(tiny_pipeline_dir.parent / "dinov2")] if method == "add" else []
    train(method, tiny_pipeline_dir, toy_data_dir, out, 2, *extra)
    assert (out / "checkpoint-2" / "training_state.json").is_file()
    train(method, tiny_pipeline_dir, toy_data_dir, out, 3, "--resume_from_checkpoint", "latest", *extra)
    assert (out / "checkpoint-3").is_dir() and (out / "README.md").is_file()
    sample(load_export(out, tiny_pipeline_dir))
    check_card_sampling(out, tiny_pipeline_dir, CARD_SAMPLING.get(method), tmp_path)


@pytest.mark.parametrize("method", sorted(STAGED_ARGS))
def test_staged_method_checkpoints_each_stage_resumes_inside_its_plan_and_exports(method: str, tiny_pipeline_dir: Path,
                                                                                 toy_data_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    full, part = tmp_path / "full", tmp_path / "part"
    train(method, tiny_pipeline_dir, toy_data_dir, full, 1, *STAGED_ARGS[method])
    names = sorted(p.name for p in full.glob("checkpoint-*"))
    assert len(names) == 2 and names[-1].startswith("checkpoint-3-")  # total limit 2 of 3 stages, named by stage
    shutil.copytree(full, part)
    shutil.rmtree(part / names[-1])
    for entry in ("model_index.json", "unet"):  # the run's own export, redone by the resume
        shutil.rmtree(part / entry) if (part / entry).is_dir() else (part / entry).unlink()
    train(method, tiny_pipeline_dir, toy_data_dir, part, 1, *STAGED_ARGS[method], "--resume_from_checkpoint", "latest")
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(full / weights), load_file(part / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the resume is exact
    sample(load_export(part, tiny_pipeline_dir))
    check_card_sampling(part, tiny_pipeline_dir, CARD_SAMPLING.get(method), tmp_path)
