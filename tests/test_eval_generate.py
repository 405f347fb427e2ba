"""Evaluation generation: one seed per image, independent of batch size and batch composition; manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill_diffusion.cli import main
from distill_diffusion.errors import UserError
from distill_diffusion.eval.generate import (
    generate_images,
    generate_to_folder,
    read_manifest,
    resolve_prompts,
)
from distill_diffusion.eval.grid import make_grid
from distill_diffusion.pipelines import load_pipeline

PROMPTS = ["a red circle", "a blue star on a white background", "a green square"]




@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(str(tiny_pipeline_dir), sampler="lcm")


def test_images_do_not_depend_on_batch_size_or_batch_composition(pipe):
    seeds = [10, 11, 12]
    one, _ = generate_images(pipe, PROMPTS, seeds, num_inference_steps=1, guidance_scale=1.0, batch_size=1)
    three, timing = generate_images(pipe, PROMPTS, seeds, num_inference_steps=1, guidance_scale=1.0, batch_size=3)
    tail, _ = generate_images(pipe, PROMPTS[1:], seeds[1:], num_inference_steps=1, guidance_scale=1.0, batch_size=2)
    assert one.dtype == torch.uint8 and one.shape == (3, 3, 32, 32)
    # uint8 rounding of float results that differ by ~1e-7 across batch shapes may flip one level
    assert (one.int() - three.int()).abs().max() <= 1
    assert (tail.int() - three[1:].int()).abs().max() <= 1
    assert timing.images == 3 and timing.seconds > 0
    other_seed, _ = generate_images(pipe, PROMPTS[:1], [99], num_inference_steps=1, guidance_scale=1.0)
    assert (other_seed.int() - one[:1].int()).abs().max() > 10


def test_generate_to_folder_is_reproducible_and_writes_the_manifest(pipe, tmp_path):
    kw = dict(num_inference_steps=2, guidance_scale=1.5, seed=7, manifest_extra={"sampler": "lcm"})
    generate_to_folder(pipe, PROMPTS, tmp_path / "a", batch_size=2, **kw)
    generate_to_folder(pipe, PROMPTS, tmp_path / "b", batch_size=3, **kw)
    entries = read_manifest(tmp_path / "a")
    assert [e["prompt"] for e in entries] == PROMPTS
    assert [e["seed"] for e in entries] == [7, 8, 9]
    assert entries[0] | {"file_name": None, "prompt": None, "seed": None} == {
        "file_name": None, "prompt": None, "seed": None, "steps": 2, "guidance_scale": 1.5,
        "scheduler": "LCMScheduler", "sampler": "lcm"}  # fmt: skip
    for entry in entries:
        a = np.asarray(Image.open(tmp_path / "a" / entry["file_name"]), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "b" / entry["file_name"]), dtype=np.int16)
        assert a.shape == (32, 32, 3) and np.abs(a - b).max() <= 1
    grid = make_grid([("a", tmp_path / "a"), ("b", tmp_path / "b")], tmp_path / "grid.png", max_rows=2, cell=40)
    with Image.open(grid) as im:
        assert im.size == (160 + 2 * 40, 28 + 2 * 40)


def test_resolve_prompts_sources_and_errors(tmp_path):
    toy = resolve_prompts("toy", 5, seed=3)
    assert len(toy) == 5 and toy == resolve_prompts("toy", 5, seed=3)
    (tmp_path / "p.txt").write_text("a\n\nb\n")
    assert resolve_prompts(tmp_path / "p.txt", num_images=5) == ["a", "b", "a", "b", "a"]
    coco = {"annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}, {"image_id": 2, "caption": "z"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert resolve_prompts(str(tmp_path / "c.json")) == ["x", "z"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="holds no prompt"):
        resolve_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="empty"):
        resolve_prompts([])


def test_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="no manifest.jsonl"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file_name": "000000.png", "prompt": "a"}) + "\n")
    with pytest.raises(UserError, match="missing"):
        read_manifest(tmp_path)


def test_cli_generate_with_lcm_sampler(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--model", str(tiny_pipeline_dir), "--sampler", "lcm", "--steps", "1", "--prompts", "toy",
                 "--num_images", "2", "--output_dir", str(out), "--grid", "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    entries = read_manifest(out)
    assert len(entries) == 2 and entries[0]["steps"] == 1 and entries[0]["guidance_scale"] == 1.0
    assert entries[0]["scheduler"] == "LCMScheduler" and (out / "grid.png").is_file()
    assert main(["generate", "--model", str(tiny_pipeline_dir), "--sampler", "nope", "--prompt", "a",
                 "--output_dir", str(tmp_path / "x")]) == 2  # fmt: skip


def test_preset_is_the_deprecated_spelling_of_sampler(capsys):
    from distill_diffusion.cli import build_parser

    args = build_parser().parse_args(["generate", "--model", "m", "--preset", "lcm", "--prompt", "a", "--output_dir", "o"])
    assert args.sampler == "lcm"
    assert capsys.readouterr().err == "warning: --preset is deprecated and will be removed; use --sampler (the same names)\n"


def test_lcm_cannot_take_more_steps_than_its_distillation_grid(tiny_pipeline_dir):
    from diffusers import LCMScheduler

    lcm = load_pipeline(str(tiny_pipeline_dir), sampler="lcm")
    lcm.scheduler = LCMScheduler.from_config(lcm.scheduler.config, original_inference_steps=5)
    images, _ = generate_images(lcm, PROMPTS[:1], [0], num_inference_steps=5, guidance_scale=1.0)
    assert images.shape[0] == 1
    with pytest.raises(UserError, match="distilled on a grid of 5 timesteps"):
        generate_images(lcm, PROMPTS[:1], [0], num_inference_steps=8, guidance_scale=1.0)
