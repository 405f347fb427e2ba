"""The toy SDXL teacher: a tiny-budget build loads in stock diffusers, trained on recorded micro-conditioning, cached in
its own versioned folder without touching the SD world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill_diffusion.cli import main
from distill_diffusion.toy import build_xl
from distill_diffusion.toy.build import BuildBudget, ensure_toy_world
from distill_diffusion.toy.build_xl import ensure_toy_xl_teacher
from distill_diffusion.toy.paths import BUILD_FILE, XL_VERSION, ToyWorld

pytestmark = pytest.mark.e2e  # trains through the engine

TINY = BuildBudget(
    num_images=64, vae_steps=2, vae_batch_size=8, unet_steps=2, unet_batch_size=8, unet_warmup_steps=1,
    clip_steps=2, clip_batch_size=8, classifier_images=64, classifier_steps=2, classifier_batch_size=8, calibration_images=0,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[ToyWorld, str]:
    """A tiny world, then its XL teacher; returns the world and the SD build.json as it was before the XL build."""
    cache = tmp_path_factory.mktemp("cache")
    world = ensure_toy_world(cache_dir=cache, budget=TINY, progress=False)
    assert not world.xl.exists(), "the SD build must not build the XL teacher"
    sd_record = world.build_json.read_text()
    (world.root / "xl.tmp-99999" / "teacher").mkdir(parents=True)  # what an interrupted XL build leaves
    assert ensure_toy_xl_teacher(cache_dir=cache, budget=TINY, progress=False) == world
    return world, sd_record


def test_layout_stamp_and_sd_world_untouched(built: tuple[ToyWorld, str]) -> None:
    world, sd_record = built
    assert world.xl_is_complete() and world.is_complete()
    assert sorted(p.name for p in world.xl.iterdir()) == [BUILD_FILE, "data", "teacher"]
    assert not list(world.root.glob("xl.tmp-*")), "the interrupted build's folder was not cleaned up"
    assert json.loads((world.xl / BUILD_FILE).read_text())["version"] == XL_VERSION
    assert world.build_json.read_text() == sd_record


def test_xl_teacher_loads_in_stock_diffusers_and_samples(built: tuple[ToyWorld, str]) -> None:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    world, _ = built
    pipe = StableDiffusionXLPipeline.from_pretrained(world.teacher_xl, local_files_only=True)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.config.force_zeros_for_empty_prompt is False  # CFG's uncond = the caption dropout's empty prompt
    assert pipe.text_encoder_2.__class__.__name__ == "CLIPTextModelWithProjection"
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    # one VAE for both teachers: the SD world's trained VAE
    sd_vae = AutoencoderKL.from_pretrained(world.teacher / "vae")
    for a, b in zip(sd_vae.parameters(), pipe.vae.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_training_recorded_real_micro_conditioning(built: tuple[ToyWorld, str]) -> None:
    world, _ = built
    geometry = json.loads((world.xl / BUILD_FILE).read_text())["unet"]["micro_conditioning"]
    assert len(geometry["original_sizes"]) >= 3 and "32x32" in geometry["original_sizes"]
    assert 0 < geometry["cropped_share"] < 0.5  # the non-square canvases, a quarter of the views


def test_xl_batches_carry_the_recorded_time_ids(built: tuple[ToyWorld, str]) -> None:
    """The data pipeline the build trains with gives time ids that differ per image, and the UNet's output depends on
    them (diffusers' text_time embedding)."""
    from torch.utils.data import DataLoader

    from distill_diffusion.config import ModelConfig
    from distill_diffusion.data.build import build_train_dataset
    from distill_diffusion.data.collate import collate_examples
    from distill_diffusion.models.batch import latents_and_embeddings
    from distill_diffusion.models.loading import load_teacher
    from distill_diffusion.toy.build import unet_run_config

    world, _ = built
    config = unet_run_config(world.xl, TINY, progress=False, random_crop=True)
    assert config.data.center_crop is False and config.data.micro_conditioning == "data"
    batch = next(iter(DataLoader(build_train_dataset(config.data), batch_size=64, collate_fn=collate_examples)))
    parts = load_teacher(ModelConfig(pretrained_model_name_or_path=str(world.teacher_xl), local_files_only=True))
    x0, c = latents_and_embeddings(batch, parts)
    assert c.time_ids is not None and len({tuple(row) for row in c.time_ids.tolist()}) >= 3
    t = torch.full((len(x0),), 500)
    out = parts.unet(x0, t, **c.unet_kwargs()).sample
    c.time_ids = torch.zeros_like(c.time_ids)
    assert not torch.allclose(out, parts.unet(x0, t, **c.unet_kwargs()).sample)


def test_reused_unless_forced_or_of_another_version(built: tuple[ToyWorld, str], monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = built
    calls: list[Path] = []
    monkeypatch.setattr(build_xl, "build_toy_xl_teacher", lambda w, b, progress=True: calls.append(w.xl))
    ensure_toy_xl_teacher(cache_dir=world.root.parent, budget=TINY, progress=False)
    assert calls == []
    ensure_toy_xl_teacher(force=True, cache_dir=world.root.parent, budget=TINY, progress=False)
    assert calls == [world.xl]
    stamp = world.xl / BUILD_FILE
    record = stamp.read_text()
    try:
        stamp.write_text(json.dumps({**json.loads(record), "version": "xl-v0"}))
        assert not world.xl_is_complete()
        ensure_toy_xl_teacher(cache_dir=world.root.parent, budget=TINY, progress=False)
        assert calls == [world.xl, world.xl]
    finally:
        stamp.write_text(record)


def test_cli_flag_reuses_the_cached_xl_teacher(built: tuple[ToyWorld, str], capsys: pytest.CaptureFixture[str]) -> None:
    world, _ = built
    assert main(["toy", "build", "--sdxl", "--cache_dir", str(world.root.parent)]) == 0
    out = capsys.readouterr().out
    assert f"teacher_xl: {world.teacher_xl}" in out and f"teacher: {world.teacher}" in out


def test_toy_init_writes_a_random_xl_teacher(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(tmp_path, num_images=8, sdxl=True)
    assert paths["teacher_xl"] == tmp_path / "teacher_xl"
    StableDiffusionXLPipeline.from_pretrained(paths["teacher_xl"], local_files_only=True)


@pytest.mark.slow
def test_trained_xl_teacher_meets_the_quality_bars() -> None:
    """The cached (or freshly built, about 17 min on 2 cores) full XL teacher at the toy's reference guidance, N = 1024:
    50 DDIM steps FD <= 1.0, CLIP >= 75, shape accuracy >= 80%; 4 leading DDIM steps >= 2.5x the 50-step FD
    (docs/toy_world.md, "The toy SDXL teacher")."""
    from distill_diffusion.toy.calibrate import calibrate

    world = ensure_toy_xl_teacher()
    calib = calibrate(world, num_images=1024, steps=(4, 50), teacher=world.teacher_xl, progress=False)
    top = calib["ddim"]["trailing"]["50"]
    assert top["fd"] <= 1.0 and top["clip_match"] >= 75 and top["acc_shape"] >= 0.8, top
    assert calib["ratios_by_spacing"]["leading"]["4"] >= 2.5, calib["ratios_by_spacing"]


def test_toy_xl_lcm_lora_config_trains_and_its_lora_loads(tmp_path: Path) -> None:
    """tiny/lcm_lora_xl for two steps on a random toy XL teacher: the LoRA loads into a stock SDXL pipeline and
    changes its images."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(tmp_path, num_images=16, sdxl=True)
    out = tmp_path / "lcm"
    assert main(["train", "lcm", "--config", "tiny/lcm_lora_xl", "--pretrained_model_name_or_path", str(paths["teacher_xl"]),
                 "--train_data_dir", str(paths["data"]), "--output_dir", str(out), "--max_train_steps", "2",
                 "--train_batch_size", "4", "--validation_steps", "0", "--checkpointing_steps", "10", "--progress_bar", "false"]) == 0
    pipe = StableDiffusionXLPipeline.from_pretrained(paths["teacher_xl"], local_files_only=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe("a red circle", num_inference_steps=4, guidance_scale=1.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    before = sample()
    pipe.load_lora_weights(out)
    assert abs(sample() - before).max() > 1e-4
