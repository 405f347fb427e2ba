"""The SD 1.5 LCM-LoRA GPU benchmark: runs end to end on a tiny UNet, SD 1.5's size, and the no-GPU error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill_diffusion.bench.gpu import SD15_UNET_CONFIG
from distill_diffusion.toy.tiny import tiny_unet_config
from distill_diffusion.trainers.methods.lcm.bench_gpu import build_lora_engine, run_sd15_lora_benchmark

# accelerate picks CUDA when there is one, so the tiny run uses the device this machine has.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_tiny_run_writes_results(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    out = tmp_path / "gpu.json"
    result = run_sd15_lora_benchmark(batch_size=2, resolution=32, steps=2, mixed_precision="no", lora_rank=4,
                                     output=out, unet_config=tiny_unet_config(), device=DEVICE)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert result["images_per_second"] > 0 and result["median_step_seconds"] > 0
    assert (result["peak_memory_gib"] is None) == (DEVICE == "cpu")
    assert result["device"] and result["torch"] == torch.__version__ and result["diffusers"]
    s = result["settings"]
    assert (s["batch_size"], s["resolution"], s["latent_size"], s["steps_timed"], s["lora_rank"], s["lora_alpha"]) == (2, 32, 4, 2, 4, 4)
    assert s["mixed_precision"] == "no" and s["guidance_scale_range"] == [6.0, 16.0]
    assert 0 < s["trainable_parameters"] == s["trainable_lora_parameters"] < s["unet_parameters"]
    with torch.device("meta"):
        base = UNet2DConditionModel.from_config(tiny_unet_config())
    assert s["unet_parameters"] == sum(p.numel() for p in base.parameters())
    md = out.with_suffix(".md").read_text()
    assert "images/s" in md and "peak memory GiB" in md


def test_only_the_lora_is_trainable(tmp_path: Path) -> None:
    engine, data = build_lora_engine(tmp_path, 2, 32, "no", False, 4, tiny_unet_config(), torch.device(DEVICE))
    unet = engine.method.models["unet"]
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert engine.method.components.vae is None
    assert data[0]["latents"].shape == (4, 4, 4) and data[0]["prompt_embeds"].shape == (77, unet.config.cross_attention_dim)


def test_sd15_config_is_sd15_sized() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
    n = sum(p.numel() for p in unet.parameters())
    assert 855e6 < n < 865e6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_without_cuda_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill_diffusion.cli import main

    out = tmp_path / "sub" / "gpu.json"
    code = main(["bench", "lcm-gpu", "--batch_size", "2", "--steps", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "CUDA GPU" in err
    assert "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
