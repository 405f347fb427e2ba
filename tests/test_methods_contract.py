"""Every method in the registry, through the CLI on the tiny pipeline: two steps, a checkpoint, a resume, the
export, and the export loaded and sampled by stock diffusers. A new method gets this test by adding its tiny
preset below (the first test fails until it does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_diffusion.cli import main
from distill_diffusion.trainers.methods.registry import METHODS

pytestmark = pytest.mark.e2e

#: The shipped tiny preset each method trains with on the toy world.
TINY_PRESETS = {"finetune": "tiny/finetune", "lcm": "tiny/lcm_lora"}


def test_every_registered_method_has_a_tiny_preset() -> None:
    assert set(TINY_PRESETS) == set(METHODS)


def train(method: str, teacher: Path, data: Path, out: Path, steps: int, *extra: str) -> None:
    args = ["train", method, "--config", TINY_PRESETS[method], "--pretrained_model_name_or_path", str(teacher),
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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_resumes_exports_and_loads_in_diffusers(method: str, tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / method
    train(method, tiny_pipeline_dir, toy_data_dir, out, 2)
    assert (out / "checkpoint-2" / "training_state.json").is_file()
    train(method, tiny_pipeline_dir, toy_data_dir, out, 3, "--resume_from_checkpoint", "latest")
    assert (out / "checkpoint-3").is_dir() and (out / "README.md").is_file()
    pipe = load_export(out, tiny_pipeline_dir)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape[0] == 1 and torch.isfinite(torch.as_tensor(image)).all()
