"""The shipped toy world: its weights match their sums and the current toy version, install into a cache as the built
world file for file (data rendered again from its seed), load in stock diffusers, and a damaged file is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from distill_diffusion.errors import UserError
from distill_diffusion.toy import shipped
from distill_diffusion.toy.build import ensure_toy_world
from distill_diffusion.toy.paths import BUILD_FILE, TOY_VERSION


def test_the_package_ships_the_current_toy_version_intact() -> None:
    assert shipped.shipped_version() == TOY_VERSION
    shipped.verify_shipped()
    info = json.loads((shipped.SHIPPED / BUILD_FILE).read_text())
    assert info["budget"]["unet_steps"] == 5200 and "installed" not in info  # a full build, not a copy of an install


def test_a_missing_cache_installs_the_shipped_world_instead_of_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr("distill_diffusion.toy.build.build_toy_world", lambda *a, **k: pytest.fail("built instead of installed"))
    world = ensure_toy_world(cache_dir=tmp_path)
    assert world.is_complete() and world.root == tmp_path / TOY_VERSION
    for line in (shipped.SHIPPED / shipped.SUMS_FILE).read_text().splitlines():
        name = line.split(maxsplit=1)[1]
        if name != BUILD_FILE:
            assert (world.root / name).read_bytes() == (shipped.SHIPPED / name).read_bytes(), name
    info = world.info()
    assert info["installed"]["from"] and len(list(world.data.glob("*.png"))) == info["budget"]["num_images"]
    assert not list(tmp_path.glob("*.tmp-*"))
    pipe = StableDiffusionPipeline.from_pretrained(world.teacher, local_files_only=True, safety_checker=None)
    image = pipe("a red circle", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape[-1] == 32 and torch.isfinite(image).all()
    assert ensure_toy_world(cache_dir=tmp_path).root == world.root  # cached: nothing happens the second time


def test_a_damaged_shipped_file_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "world"
    shutil.copytree(shipped.SHIPPED, folder)
    (folder / "teacher" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(UserError, match="teacher/unet/diffusion_pytorch_model.safetensors is missing or damaged.*toy build --force"):
        shipped.install_shipped_world(tmp_path / "cache" / TOY_VERSION, folder)
    assert not (tmp_path / "cache" / TOY_VERSION).exists()


def test_the_reference_rows_are_the_quickstart_teacher_rows_of_the_installed_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every teacher row the quickstart shows has a reference row under its key, on a freshly installed world, so a
    newcomer's first table generates only the LoRA's rows (a rebuilt world without new reference rows fails here)."""
    import distill_diffusion.pipelines as pipelines
    from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
    from distill_diffusion.quickstart import teacher_specs

    world = ensure_toy_world(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("a teacher row had no reference row"))
    settings = toy_bench_settings(world, 1024, tmp_path / "cache")  # every toy benchmark reads the reference rows
    result = run_quality_benchmark(teacher_specs(str(world.teacher)), tmp_path / "bench", settings)
    assert len(result["rows"]) == 10 and all(r.endswith("(reference)") for r in result["meta"]["reused_rows"])
    fifty = next(r for r in result["rows"] if r["pipeline"] == "teacher" and r["steps"] == 50)
    assert 0.5 < fifty["fid"] < 0.7 and fifty["num_images"] == 1024
