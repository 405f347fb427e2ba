"""The training peak-memory estimate of progressive, BK-SDM and LADD configs (``bench train-memory``): its counts are the
real methods' models, its terms follow the step's structure, and its CLI writes the table or refuses bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from distill_diffusion.bench.memory_methods import LADD_PHASES, STEP, estimate_method_training
from distill_diffusion.cli import main
from distill_diffusion.config import load_config
from distill_diffusion.toy.tiny_sdxl import tiny_sdxl_unet_config

TINY = tiny_sdxl_unet_config()
GIB = 2**30


def _estimate(method: str, options: dict, **kw) -> dict:
    args = {"batch_size": 2, "resolution": 32, "mixed_precision": "bf16", "gradient_checkpointing": True, "use_ema": True,
            "vae_factor": 4, **kw}
    return estimate_method_training(method, TINY, options, **args)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_progressive_holds_two_frozen_teachers_and_a_whole_student_with_its_w_embedding() -> None:
    result = _estimate("progressive", {"guidance": "distill", "time_cond_proj_dim": 16})
    student = _count(UNet2DConditionModel(**TINY, time_cond_proj_dim=16))
    base = _count(UNet2DConditionModel(**TINY))
    assert result["trainable_parameters"] == student > result["unet_parameters"] == base
    terms = result["terms_gib"]
    assert terms["frozen teacher + the previous round's student, weight dtype"] == pytest.approx((base + student) * 2 / GIB)
    assert terms["student AdamW moments (fp32)"] == pytest.approx(student * 8 / GIB)
    assert terms["student EMA copy (fp32)"] == pytest.approx(student * 4 / GIB)
    assert "student EMA copy (fp32)" not in _estimate("progressive", {}, use_ema=False)["terms_gib"]


def test_bksdm_trains_the_variants_student_and_holds_both_models_features() -> None:
    from distill_diffusion.trainers.methods.bksdm.architecture import student_config

    options = dict(load_config("tiny/bksdm_xl")["method"])
    result = _estimate("bksdm", options)
    assert result["trainable_parameters"] == _count(UNet2DConditionModel(**student_config(TINY, options["variant"])))
    assert result["feature_pairs"] > 0 and result["captured_features_gib"] > 0
    without = _estimate("bksdm", {**options, "lambda_feat": 0.0})
    assert without["feature_pairs"] == 0 and without["captured_features_gib"] == 0
    key = f"{STEP[0]}: activations held until the backward"
    assert without["terms_gib"][key] < result["terms_gib"][key]


def test_ladds_lora_and_heads_are_the_real_methods_and_its_phases_are_separate() -> None:
    from distill_diffusion.models.lora import attach_lora
    from distill_diffusion.trainers.methods.ladd.config import LADDConfig

    options = dict(load_config("tiny/ladd_xl")["method"])
    result = _estimate("ladd", options)
    cfg, real = LADDConfig(**options), UNet2DConditionModel(**TINY)
    attach_lora(real, cfg.lora_rank, cfg.lora_alpha, 0.0, cfg.lora_target_modules)
    lora = sum(p.numel() for n, p in real.named_parameters() if "lora_" in n)
    assert result["trainable_parameters"] == lora > 0 and result["head_parameters"] > 0
    terms = result["terms_gib"]
    assert terms[f"{LADD_PHASES[1]}: generator's rollback snapshot (weights + moments)"] == pytest.approx(lora * 12 / GIB)
    assert terms[f"{LADD_PHASES[1]}: gradients (fp32)"] == pytest.approx(result["head_parameters"] * 4 / GIB)
    held = sum(terms.values()) - sum(result["phases_gib"].values())
    assert result["peak_gib"] == pytest.approx(held + max(result["phases_gib"].values()))
    full = _estimate("ladd", {**options, "lora": False})
    assert full["trainable_parameters"] == full["unet_parameters"] and full["peak_gib"] > result["peak_gib"]


def test_add_holds_the_vae_decode_and_the_vits_read_of_the_samples_with_gradients() -> None:
    """ADD's generator phase keeps what the VAE decoder and DINOv2 save for the backward to the student's samples: far
    more than LADD's, whose discriminator reads the UNet's own features; the heads are the real method's."""
    from distill_diffusion.bench.memory_add import dinov2_config
    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.trainers.methods.adversarial.heads import DiscriminatorHeads

    options = {"feature_network": "facebook/dinov2-small", "feature_layers": [3, 6, 9, 12], "head_width": 8}
    result, ladd = _estimate("add", options), _estimate("ladd", {"head_width": 8})
    key = f"{LADD_PHASES[0]}: activations held until the backward"
    assert result["terms_gib"][key] > ladd["terms_gib"][key] > 0
    width = dinov2_config("facebook/dinov2-small").hidden_size
    heads = DiscriminatorHeads(dict.fromkeys(["block3", "block6", "block9", "block12"], width), pooled_text_width(TINY) + width, 8, dims=1)
    assert result["head_parameters"] == _count(heads) and width == 384
    assert result["terms_gib"]["frozen DINOv2 feature network, weight dtype"] > 0


def test_add_checkpoints_the_vae_decoder_under_gradient_checkpointing() -> None:
    """As ``ADD.enable_frozen_checkpointing`` does: the decode of the samples keeps only its blocks' inputs through the
    generator's backward and recomputes its worst block there; the no-grad decode of the real latents is bounded by
    that block, not by the whole decode."""
    from distill_diffusion.bench.memory_add import add_judge
    from distill_diffusion.trainers.methods.add.config import ADDConfig

    cfg = ADDConfig(feature_network="facebook/dinov2-small", head_width=8)
    on, off = (add_judge(TINY, cfg, 2, 16, torch.bfloat16, checkpointing)(None, None) for checkpointing in (True, False))
    heads, held, extra, discriminator = on
    assert heads == off[0] and discriminator == off[3]
    assert held < off[1] and extra > off[2] > 0
    no_grad = next(v for k, v in discriminator.items() if "no-grad decode" in k)
    assert no_grad < off[1]  # the largest block's and the read's, not the whole decode's


def test_add_refuses_a_feature_network_it_cannot_size() -> None:
    from distill_diffusion.errors import UserError

    with pytest.raises(UserError, match="neither a local folder with config.json nor one of"):
        _estimate("add", {"feature_network": "someone/vit"})


@pytest.mark.parametrize("method,options", [("progressive", {}), ("bksdm", {"variant": "small"}), ("ladd", {}),
                                            ("add", {"feature_network": "facebook/dinov2-small"})])
def test_more_batch_more_memory_and_checkpointing_holds_less(method: str, options: dict) -> None:
    small, large = _estimate(method, options), _estimate(method, options, batch_size=4)
    assert 0 < small["peak_gib"] < large["peak_gib"] < large["peak_with_margin_gib"]
    unchecked = _estimate(method, options, gradient_checkpointing=False)
    phase = next(iter(small["phases_gib"]))
    key = f"{phase}: activations held until the backward"
    assert small["terms_gib"][key] < unchecked["terms_gib"][key]


def test_train_memory_cli_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ladd.json"
    assert main(["bench", "train-memory", "--config", "ladd_sd15", "--resolution", "128", "--batch_size", "1",
                 "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["config"] == "ladd_sd15" and 855e6 < result["unet_parameters"] < 865e6
    assert set(result["phases_gib"]) == set(LADD_PHASES) and result["fits_card"] is True
    table = out.with_suffix(".md").read_text()
    assert "| **peak**" in table and "--config ladd_sd15 --batch_size 1 --resolution 128" in table
    assert "Fits a 80 GB card" in capsys.readouterr().out


@pytest.mark.parametrize("argv,says", [
    (["--batch_size", "0"], "--batch_size 0 must be >= 1"),
    (["--resolution", "100"], "--resolution 100 must be a positive multiple of 64"),
    (["--resolution", "0"], "--resolution 0 must be a positive multiple of 64"),
    (["--card_gib", "-1"], "--card_gib -1.0 must be > 0"),
])  # fmt: skip
def test_train_memory_refuses_bad_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    out = tmp_path / "m.json"
    assert main(["bench", "train-memory", "--config", "bksdm_small_sd14", *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("config,says", [("dmd2_sdxl", "bench lora-memory"), ("lcm_lora_sdxl", "bench lora-memory"),
                                         ("no_such", "is not estimated here")])
def test_train_memory_refuses_a_config_it_does_not_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str,
                                                          says: str) -> None:
    out = tmp_path / "m.json"
    assert main(["bench", "train-memory", "--config", config, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and not out.exists()


def test_autocast_keeps_the_norms_inputs_and_the_silu_after_a_group_norm_in_fp32() -> None:
    """CUDA autocast runs group_norm and layer_norm in fp32: the estimate counts each norm's saved input, and the
    GroupNorm output the SiLU saves, at 4 bytes; the convolution's saved input stays at the autocast width."""
    from distill_diffusion.bench.memory_estimate import autocast_fp32_tensors, profile_saved

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.SiLU(), torch.nn.Conv2d(4, 4, 1), torch.nn.SiLU())
    model.to(torch.bfloat16)
    x = torch.empty(1, 4, 8, 8, device="meta", dtype=torch.bfloat16, requires_grad=True)
    outputs: dict[str, torch.Tensor] = {}
    model[2].register_forward_pre_hook(lambda m, args: outputs.update(conv=args[0]))
    with autocast_fp32_tensors(model) as fp32:
        model(x)
    assert id(x) in fp32 and id(outputs["conv"]) not in fp32 and len(fp32) == 2  # the norm's input and its output
    total = profile_saved(model, lambda: model(x), [], torch.bfloat16).outside
    elements = 4 * 8 * 8
    # norm in, SiLU in (fp32); conv in, last SiLU in (bf16); and the norm's mean and rstd (one per group)
    assert elements * (4 + 4 + 2 + 2) <= total <= elements * (4 + 4 + 2 + 2) + 4 * 4
