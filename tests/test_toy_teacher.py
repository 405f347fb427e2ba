"""The toy benchmarks' ``--sdxl``: the toy SDXL teacher, its tiny ``_xl`` configs (each the SD recipe unchanged), the
folders they write, and each new tiny XL config training through the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from distill_diffusion.bench import methods
from distill_diffusion.bench import toy_runs as toy_runs_module
from distill_diffusion.cli import main
from distill_diffusion.config import load_config
from distill_diffusion.toy.paths import ToyTeacher, ToyWorld
from distill_diffusion.trainers.methods.bksdm import bench_toy as bksdm_toy
from distill_diffusion.trainers.methods.progressive import bench_toy as progressive_toy
from distill_diffusion.trainers.methods.registry import toy_students

#: Every tiny config a toy benchmark trains (through ``ToyTeacher.config``).
BENCH_CONFIGS = ("tiny/lcm_lora", "tiny/lcm_full", progressive_toy.CONFIG, bksdm_toy.CONFIG, *(s.config for n, (_, s) in toy_students().items() if n in ("ladd", "add", "dmd2")))


def test_the_toy_teacher_names_its_paths_configs_and_folders(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path / "toy-v3")
    sd, xl = ToyTeacher(world), ToyTeacher(world, sdxl=True)
    assert (sd.path, xl.path) == (world.teacher, world.teacher_xl) and sd.data == xl.data == world.data
    assert (sd.config("tiny/ladd"), xl.config("tiny/ladd")) == ("tiny/ladd", "tiny/ladd_xl")
    assert (sd.folder("out/bksdm"), xl.folder("out/bksdm")) == (Path("out/bksdm"), Path("out/bksdm_xl"))


@pytest.mark.parametrize("name", BENCH_CONFIGS)
def test_each_tiny_xl_config_is_its_sd_recipe_on_the_xl_teacher(name: str) -> None:
    sd, xl = load_config(name), load_config(f"{name}_xl")
    # the XL LCM-LoRA trains 1600 steps on the N = 8 grid (its 4-step bar needed both), the XL BK-SDM student 2000 (its
    # bar was met there), the XL progressive rounds 500-1000 steps (its 30-min budget): the configs' comments; nothing
    # else differs
    xl_grid = {"tiny/lcm_lora": {"num_ddim_timesteps": 8},
               progressive_toy.CONFIG: {"steps_per_round": [500, 500, 600, 700, 800, 1000]}}.get(name, {})
    assert xl["method_name"] == sd["method_name"] and xl["method"] == sd["method"] | xl_grid and xl.get("phases") == sd.get("phases")
    xl_steps = {"tiny/lcm_lora": 1600, "tiny/bksdm": 2000}
    assert xl["train"].get("max_train_steps") == xl_steps.get(name, sd["train"].get("max_train_steps"))
    skip = {"output_dir", "max_train_steps"}
    assert {k: v for k, v in xl["train"].items() if k not in skip} == {k: v for k, v in sd["train"].items() if k not in skip}
    assert xl["model"]["pretrained_model_name_or_path"].endswith("teacher_xl")
    assert {k: v for k, v in xl["data"].items() if k != "micro_conditioning"} == sd["data"]
    assert xl["data"]["micro_conditioning"] == "data" and xl["train"]["output_dir"].endswith("_xl")


@pytest.mark.parametrize("module", [methods, bksdm_toy, progressive_toy])
@pytest.mark.parametrize(("argv", "suffix"), [([], ""), (["--sdxl"], "_xl")])
def test_toy_benchmarks_take_the_xl_teacher_and_write_beside_the_sd_results(module, argv: list[str], suffix: str, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr("distill_diffusion.toy.build.ensure_toy_world", lambda cache_dir=None: built.append("sd") or ToyWorld(tmp_path))
    monkeypatch.setattr("distill_diffusion.toy.build_xl.ensure_toy_xl_teacher", lambda cache_dir=None: built.append("xl") or ToyWorld(tmp_path))
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    teacher, out, run_dir = toy_runs_module.load_toy_teacher(parser.parse_args(argv))
    assert built == ["xl" if suffix else "sd"] and teacher.sdxl == bool(suffix)
    default_out, default_run = parser.parse_args([]).toy_folders
    assert (out, run_dir) == (Path(default_out + suffix), Path(default_run + suffix))
    given = parser.parse_args([*argv, "--output_dir", str(tmp_path / "o"), "--run_dir", str(tmp_path / "r")])
    assert toy_runs_module.load_toy_teacher(given)[1:] == (tmp_path / "o", tmp_path / "r")


def test_bksdm_toy_refuses_the_small_lcm_lora_without_the_small_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distill_diffusion.toy.build.ensure_toy_world", lambda **kw: pytest.fail("built the toy world"))
    code = main(["bench", "bksdm-toy", "--runs", "base", "small-lcm-lora", "--cache_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "config"), [("progressive", "tiny/progressive_xl"), ("ladd", "tiny/ladd_xl"), ("add", "tiny/add_xl")])
def test_each_tiny_xl_config_trains_and_exports_for_stock_sdxl(method: str, config: str, tmp_path: Path) -> None:
    """Two steps (progressive: a 2-step conversion and one 2-step round) on a random toy XL teacher; the export loads in
    a stock ``StableDiffusionXLPipeline`` (a LoRA onto the teacher) and samples finite images."""
    from diffusers import StableDiffusionXLPipeline

    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(tmp_path, num_images=16, sdxl=True)
    out = tmp_path / "run"
    extra = (["--method.start_steps", "4", "--method.target_steps", "2", "--method.steps_per_round", "2", "--method.convert_steps", "2"]
             if method == "progressive" else ["--max_train_steps", "2"])
    if method == "add":
        extra += ["--method.feature_network", str(paths["dinov2"])]
    assert main(["train", method, "--config", config, "--pretrained_model_name_or_path", str(paths["teacher_xl"]),
                 "--train_data_dir", str(paths["data"]), "--output_dir", str(out), "--train_batch_size", "4",
                 "--validation_steps", "0", "--checkpointing_steps", "10", "--progress_bar", "false", *extra]) == 0
    if method == "progressive":
        exported = sorted(p.parent for p in out.rglob("model_index.json"))
        assert exported, "no round exported a pipeline"
        pipe = StableDiffusionXLPipeline.from_pretrained(exported[-1], local_files_only=True)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(paths["teacher_xl"], local_files_only=True)
        pipe.load_lora_weights(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()
