"""SDXL benchmarks' code: the meta-device peak-memory estimator, the SDXL GPU benchmark on a tiny SDXL UNet, and the
shared engine builders taking the toy XL architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from distill_diffusion.bench.gpu import SDXL_UNET_CONFIG
from distill_diffusion.bench.memory_estimate import (
    activation_profile,
    add_meta_lora,
    estimate_lora_training,
    meta_unet,
)
from distill_diffusion.bench.sdxl_gpu import CONFIGS, LCM_SDXL_OPTIONS, run_sdxl_gpu_benchmark
from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES
from distill_diffusion.toy.tiny_sdxl import tiny_sdxl_unet_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # accelerate picks CUDA when there is one
TINY = tiny_sdxl_unet_config()


def _estimate(**kw) -> dict:
    args = {"batch_size": 2, "resolution": 32, "lora_rank": 4, "target_modules": DEFAULT_TARGET_MODULES,
            "mixed_precision": "bf16", "gradient_checkpointing": True, "vae_factor": 4, **kw}
    return estimate_lora_training(TINY, **args)


def test_meta_counts_equal_the_real_models() -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    real = UNet2DConditionModel(**TINY)
    meta = meta_unet(TINY, torch.bfloat16)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    real.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(DEFAULT_TARGET_MODULES)))
    lora = sum(p.numel() for n, p in real.named_parameters() if "lora_" in n)
    assert add_meta_lora(meta, 4, DEFAULT_TARGET_MODULES) == lora > 0


def test_sdxl_config_is_sdxl_base() -> None:
    unet = meta_unet(SDXL_UNET_CONFIG, torch.bfloat16)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base's UNet
    assert unet.config.projection_class_embeddings_input_dim == 6 * 256 + 1280


def test_estimate_is_monotone_in_batch_and_resolution() -> None:
    small, bigger_batch, bigger_image = _estimate(), _estimate(batch_size=4), _estimate(resolution=64)
    for other in (bigger_batch, bigger_image):
        assert other["peak_gib"] > small["peak_gib"]
        assert other["terms_gib"]["student activations held through the forward"] > small["terms_gib"]["student activations held through the forward"]
    # weights do not depend on the batch; activations grow with it linearly (the weights autograd saves for backward
    # are the weights themselves, counted once as weights, not again as activations)
    assert bigger_batch["terms_gib"]["UNet weights (frozen, weight dtype)"] == small["terms_gib"]["UNet weights (frozen, weight dtype)"]
    ratio = bigger_batch["activations_without_checkpointing_gib"] / small["activations_without_checkpointing_gib"]
    assert ratio == pytest.approx(2.0)


def test_checkpointing_holds_less_and_units_are_found() -> None:
    on, off = _estimate(), _estimate(gradient_checkpointing=False)
    held = "student activations held through the forward"
    assert on["terms_gib"][held] < off["terms_gib"][held] == pytest.approx(off["activations_without_checkpointing_gib"])
    # 2 resnets x 3 down levels + 3 x 3 up + 2 mid; 1 transformer block per attention (2 down x 2, 3 x 2 up, 1 mid)
    assert on["checkpoint_units"] == 6 + 9 + 2 + 4 + 6 + 1


def test_attention_is_counted_as_flash_attention_saves_it() -> None:
    """No [N, N] probabilities among the saved tensors: doubling the tokens at most about doubles attention's share."""
    unet = meta_unet(TINY, torch.bfloat16)
    add_meta_lora(unet, 4, DEFAULT_TARGET_MODULES)
    a, b = activation_profile(unet, 1, 8, torch.bfloat16), activation_profile(unet, 1, 16, torch.bfloat16)
    assert b.total < 4.5 * a.total  # 4x the pixels; a quadratic attention term would make it grow faster


def test_lora_memory_cli_writes_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill_diffusion.cli import main

    out = tmp_path / "mem.json"
    assert main(["bench", "lora-memory", "--family", "sd15", "--resolution", "128", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 855e6 < result["unet_parameters"] < 865e6 and result["fits_card"] is True
    assert "| **peak**" in out.with_suffix(".md").read_text() and "Fits a 24 GB card" in capsys.readouterr().out


def test_dmd2_one_base_mode_holds_one_unet_and_two_adapters_where_full_mode_holds_three_unets() -> None:
    """The estimate's trainable weights are the real method's: two peft adapters of the rank on one UNet (the one-base
    mode's, as DMD2 attaches them) against two fp32 copies of the UNet; the frozen UNet is there in both."""
    from distill_diffusion.bench.memory_dmd2 import MODES, estimate_dmd2_training
    from distill_diffusion.models.lora import attach_lora, attach_second_lora

    result = estimate_dmd2_training(TINY, batch_size=2, resolution=32, lora_rank=4, target_modules=DEFAULT_TARGET_MODULES,
                                    head_width=8, vae_factor=4)
    real = UNet2DConditionModel(**TINY)
    attach_lora(real, 4, 4, 0.0, DEFAULT_TARGET_MODULES)
    attach_second_lora(real, "fake_score", 4, 4, DEFAULT_TARGET_MODULES)
    adapters = sum(p.numel() for n, p in real.named_parameters() if ".lora_" in n)
    assert 2 * result["lora_parameters_per_adapter"] == adapters
    one_base, full = (result["modes"][m]["terms_gib"] for m in MODES)
    gib, base = 2**30, result["unet_parameters"]
    assert one_base["generator + fake-score weights (fp32)"] == pytest.approx(adapters * 4 / gib)
    assert full["generator + fake-score weights (fp32)"] == pytest.approx(2 * base * 4 / gib)
    assert one_base["frozen UNet (real score), weight dtype"] == full["frozen UNet (real score), weight dtype"] == pytest.approx(base * 2 / gib)
    # the generator phase's rollback snapshot and AdamW moments scale with what trains: far less in one-base mode
    key = "fake-score phase: generator's rollback snapshot (weights + moments)"
    assert one_base[key] == pytest.approx(adapters / 2 * 12 / gib) and full[key] == pytest.approx(base * 12 / gib)
    assert max(result["states_one_base_over_full"], result["one_base_over_full"]) < 0.5
    for mode in result["modes"].values():
        assert mode["peak_gib"] > max(mode["phases_gib"].values()) > 0


def test_the_classifiers_truncated_forward_saves_less_than_the_whole_unet() -> None:
    unet = meta_unet(TINY, torch.bfloat16)
    add_meta_lora(unet, 4, DEFAULT_TARGET_MODULES)
    profile = activation_profile(unet, 2, 8, torch.bfloat16)
    encoder = profile.encoder()
    assert 0 < encoder.total < profile.total and 0 < len(encoder.unit_saved) < len(profile.unit_saved)


def test_lora_memory_cli_estimates_dmd2s_two_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill_diffusion.cli import main

    out = tmp_path / "dmd2.json"
    assert main(["bench", "lora-memory", "--method", "dmd2", "--family", "sd15", "--resolution", "128", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"one-base LoRA", "full"} and result["one_base_over_full"] <= 0.5
    table = out.with_suffix(".md").read_text()
    assert "| term | one-base LoRA mode GiB | full mode GiB |" in table and "--method dmd2" in table
    assert "One-base / full: peak" in capsys.readouterr().out


#: Options over each config's that fit the tiny XL UNet (its transformers have one layer: KOALA's depth cut needs more).
TINY_FIT = {"bksdm_koala_700m_sdxl": {"variant": "small"}, "bksdm_koala_1b_sdxl": {"variant": "base"}}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_sdxl_gpu_benchmark_times_each_sdxl_config_on_a_tiny_sdxl_unet(tmp_path: Path, config: str) -> None:
    """The SDXL components (two encoders, pooled text, time ids) and the timing path of every config it times: a LoRA
    (LCM, LADD: the heads train too), a whole UNet (progressive, past its guidance stage) and a KOALA student."""
    out = tmp_path / "gpu.json"
    lora = {"lora_rank": 4} if config in ("lcm_lora_sdxl", "ladd_sdxl") else {}
    result = run_sdxl_gpu_benchmark(config, batch_size=2, resolution=32, steps=2, mixed_precision="no", output=out,
                                    unet_config=TINY, device=DEVICE, method_options=TINY_FIT.get(config), **lora)
    s = result["settings"]
    assert result["images_per_second"] > 0 and "SDXL" not in result["benchmark"]  # a custom config is named so
    assert s["config"] == config and s["unet_parameters"] == sum(p.numel() for p in UNet2DConditionModel(**TINY).parameters())
    if lora:
        assert s["method_options"]["lora_rank"] == 4 and 0 < s["trainable_by_model"]["unet"] < s["unet_parameters"]
    elif config == "progressive_sdxl":
        assert s["trainable_parameters"] >= s["unet_parameters"]  # the whole student (with its w-embedding)
    else:
        assert 0 < s["trainable_parameters"] < s["unet_parameters"]  # the smaller student
    assert config in out.with_suffix(".md").read_text()


def test_the_lcm_lora_sdxl_config_is_the_diffusers_sdxl_recipe() -> None:
    from distill_diffusion.config import load_config

    assert LCM_SDXL_OPTIONS.items() <= load_config("lcm_lora_sdxl")["method"].items()


def test_sdxl_gpu_refuses_a_rank_for_a_config_without_lora(tmp_path: Path) -> None:
    from distill_diffusion.cli import main

    assert main(["bench", "sdxl-gpu", "--config", "progressive_sdxl", "--lora_rank", "4", "--output", str(tmp_path / "g.json")]) == 2
    assert not (tmp_path / "g.json").exists()


def test_tiny_engine_builds_the_toy_xl_architecture(tmp_path: Path) -> None:
    from distill_diffusion.bench.timing import engine_stepper, tiny_engine

    engine, data = tiny_engine(tmp_path, "finetune", 2, family="sdxl")
    assert engine.method.components.family == "sdxl"
    assert data[0]["text_embeds"].shape == (40,) and data[0]["original_size"].tolist() == [32, 32]
    engine_stepper(engine)()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sdxl_lcm_lora_step_on_the_gpu(tmp_path: Path) -> None:
    """The real thing at its smallest: SDXL's UNet, 1024², bf16, rank 64, checkpointing, one image, two timed steps."""
    result = run_sdxl_gpu_benchmark(batch_size=1, steps=2, output=tmp_path / "gpu.json")
    assert result["settings"]["unet_parameters"] == 2_567_463_684 and result["peak_memory_gib"] > 5


@pytest.mark.parametrize("argv,says", [(["--resolution", "0"], "resolution=0 must be a positive multiple of 64"),
                                       (["--card_gib", "0"], "card_gib=0.0 must be > 0")])
def test_lora_memory_refuses_bad_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    from distill_diffusion.cli import main

    out = tmp_path / "m.json"
    assert main(["bench", "lora-memory", "--family", "sd15", *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and not out.exists()
