"""The exported LoRA's metadata: only fields every supported peft knows, so older peft versions still load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pytest
import torch
from safetensors import safe_open

from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES, attach_lora, save_lora

LORA_FILE = "pytorch_lora_weights.safetensors"
RANK, ALPHA = 4, 8  # alpha ≠ rank: a loader that drops the metadata would scale by 1 instead of 2
ALLOWED = {"r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_dora", "use_rslora",
           "rank_pattern", "alpha_pattern", "init_lora_weights"}
#: ``dataclasses.fields(LoraConfig)`` of peft 0.15.0, the oldest peft the project supports (diffusers 0.34
#: refuses older); the ALLOWED fields exist in peft 0.13.2 too.
OLDEST_PEFT_FIELDS = ALLOWED | {
    "auto_mapping", "base_model_name_or_path", "corda_config", "eva_config", "exclude_modules", "fan_in_fan_out",
    "inference_mode", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_bias",
    "megatron_config", "megatron_core", "modules_to_save", "peft_type", "revision", "runtime_config", "task_type",
    "trainable_token_indices",
}


def unet_inputs(config: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, config.in_channels, 8, 8, generator=g)
    c = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    return z, torch.tensor([999, 259]), c


def unet_output(unet: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        z, t, c = unet_inputs(unet.config)
        return unet(z, t, encoder_hidden_states=c).sample.numpy()


@pytest.fixture(scope="module")
def exported(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An fp32 export of a LoRA with random B (a zero-init adapter would change nothing), its output and the base's."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    base = unet_output(unet)
    params = attach_lora(unet, RANK, ALPHA, 0.0, DEFAULT_TARGET_MODULES)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("lora")
    save_lora(unet, out, dtype=torch.float32)
    return out, unet_output(unet), base


def saved_metadata(out: Path) -> dict[str, Any]:
    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
    return {k.removeprefix("unet."): v for k, v in meta.items()}


def test_metadata_holds_only_the_portable_fields(exported: tuple[Path, np.ndarray, np.ndarray]) -> None:
    meta = saved_metadata(exported[0])
    assert set(meta) == ALLOWED
    config = peft.LoraConfig(**meta)
    assert config.r == RANK and config.lora_alpha == ALPHA
    assert set(config.target_modules) == set(DEFAULT_TARGET_MODULES)
    assert isinstance(meta["rank_pattern"], dict)  # diffusers 0.34 indexes config["rank_pattern"] unguarded


def load_and_run(tiny_pipeline_dir: Path, lora_dir: Path) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    pipe.load_lora_weights(lora_dir)
    return unet_output(pipe.unet)


def test_stock_loader_reproduces_the_in_memory_lora(exported: tuple[Path, np.ndarray, np.ndarray], tiny_pipeline_dir: Path) -> None:
    out, ref, base = exported
    loaded = load_and_run(tiny_pipeline_dir, out)
    effect, error = np.abs(ref - base).max(), np.abs(loaded - ref).max()
    assert effect > 1e-2 and error < 1e-5, (effect, error)


class OldLoraConfig(peft.LoraConfig):
    """``LoraConfig`` as peft 0.15 builds it: a keyword it does not know is a TypeError."""

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - OLDEST_PEFT_FIELDS)
        if unknown:
            raise TypeError(f"LoraConfig.__init__() got an unexpected keyword argument {unknown[0]!r}")
        super().__init__(**kwargs)


def test_an_older_peft_loads_the_adapter(exported: tuple[Path, np.ndarray, np.ndarray], tiny_pipeline_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out, ref, _ = exported
    monkeypatch.setattr(peft, "LoraConfig", OldLoraConfig)  # diffusers imports it from peft at load time
    loaded = load_and_run(tiny_pipeline_dir, out)
    assert np.abs(loaded - ref).max() < 1e-5
