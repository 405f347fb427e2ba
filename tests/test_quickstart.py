"""The quickstart end to end on a minute-scale toy world: build, distil an LCM-LoRA, benchmark, print."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from distill_diffusion.toy import build

pytestmark = pytest.mark.e2e  # trains through the CLI or starts processes


def test_quickstart_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = replace(build.BUDGETS["small"], num_images=128, vae_steps=2, unet_steps=2, clip_steps=2, calibration_images=0)
    monkeypatch.setitem(build.BUDGETS, "tiny-test", tiny)
    from distill_diffusion.cli import main

    code = main(["quickstart", "--output_dir", str(tmp_path / "qs"), "--cache_dir", str(tmp_path / "cache"),
                 "--num_images", "40", "--lcm_steps", "2", "--budget", "tiny-test"])
    assert code == 0
    out = capsys.readouterr().out
    assert "fid_vs_steps.png" in out and "| lcm-lora |" in out.replace("|  lcm-lora", "| lcm-lora")
    rows = json.loads((tmp_path / "qs" / "bench" / "results.json").read_text())["rows"]
    steps = {(r["pipeline"], r["steps"]) for r in rows}
    assert {("teacher", 50), ("teacher", 1), ("lcm-lora", 4), ("teacher-trailing", 4)} <= steps
    assert all(r["fid"] is not None and r["clip_score"] is not None for r in rows)
    assert (tmp_path / "qs" / "lcm_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "qs" / "bench" / "grid_lcm-lora.png").is_file()



def test_quickstart_sdxl_runs_the_same_table_on_the_xl_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    tiny = replace(build.BUDGETS["small"], num_images=64, vae_steps=2, unet_steps=2, clip_steps=2,
                   classifier_steps=2, calibration_images=0)
    monkeypatch.setitem(build.BUDGETS, "tiny-test", tiny)
    from distill_diffusion.cli import main

    code = main(["quickstart", "--sdxl", "--output_dir", str(tmp_path / "qs"), "--cache_dir", str(tmp_path / "cache"),
                 "--num_images", "40", "--lcm_steps", "2", "--budget", "tiny-test"])
    assert code == 0
    assert "bench_xl" in capsys.readouterr().out
    rows = json.loads((tmp_path / "qs" / "bench_xl" / "results.json").read_text())["rows"]
    assert {(r["pipeline"], r["steps"]) for r in rows} >= {("teacher", 50), ("teacher-trailing", 4), ("lcm-lora", 4)}
    assert all(r["model"].endswith("xl/teacher") for r in rows)
    from safetensors.torch import load_file

    lora = load_file(tmp_path / "qs" / "lcm_lora_xl" / "pytorch_lora_weights.safetensors")
    to_k = [v for k, v in lora.items() if "attn2.to_k" in k and "lora_A" in k]
    assert to_k and all(v.shape[1] == 80 for v in to_k), "the LoRA of the XL UNet (cross-attention 32 + 48 wide)"
    assert (tmp_path / "cache" / "toy-v3" / "xl" / "teacher" / "text_encoder_2").is_dir()
