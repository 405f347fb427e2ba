"""An SDXL LoRA export: stock ``StableDiffusionXLPipeline.load_lora_weights`` reproduces the in-memory adapter, and the
kohya copy (sgm names, as kohya-ss writes SDXL LoRAs) loads through diffusers' kohya converter to the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_sd import _unet_key
from safetensors.torch import load_file

from distill_diffusion.models.kohya import sgm_module_name
from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES, attach_lora, save_lora

KOHYA = "kohya.safetensors"
RANK, ALPHA = 4, 8  # alpha ≠ rank: the metadata (diffusers file) and the .alpha keys (kohya file) must carry it


def unet_output(unet: torch.nn.Module) -> np.ndarray:
    """The UNet on fixed inputs, SDXL's added conditions included (pooled text and six time ids)."""
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(2, pooled, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return unet(z, torch.tensor([999, 259]), encoder_hidden_states=c, added_cond_kwargs=added).sample.numpy()


@pytest.fixture(scope="module")
def exported(tiny_sdxl_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An fp32 export of a LoRA with random B on the tiny SDXL UNet, its output and the base's."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_pipeline_dir / "unet")
    base = unet_output(unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in attach_lora(unet, RANK, ALPHA, 0.0, DEFAULT_TARGET_MODULES):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("xl_lora")
    save_lora(unet, out, dtype=torch.float32, family="sdxl", kohya_name=KOHYA)
    return out, unet_output(unet), base


def _pipe(folder: Path, lora: Path, weight_name: str | None = None):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.load_lora_weights(lora, weight_name=weight_name)
    return pipe


def _lora_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in unet.state_dict().items() if ".lora_" in k}


def test_stock_sdxl_loader_reproduces_the_in_memory_lora(exported, tiny_sdxl_pipeline_dir: Path) -> None:
    out, ref, base = exported
    loaded = unet_output(_pipe(tiny_sdxl_pipeline_dir, out).unet)
    effect, error = np.abs(ref - base).max(), np.abs(loaded - ref).max()
    assert effect > 1e-2 and error < 1e-5, (effect, error)


def test_kohya_copy_loads_to_the_same_weights(exported, tiny_sdxl_pipeline_dir: Path) -> None:
    out, ref, _ = exported
    kohya = load_file(str(out / KOHYA))
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert any("input_blocks" in k for k in kohya) and any("output_blocks" in k for k in kohya)  # sgm names, as kohya-ss
    assert not any("down_blocks" in k or "up_blocks" in k for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {float(ALPHA)}
    a = _lora_weights(_pipe(tiny_sdxl_pipeline_dir, out).unet)
    kohya_pipe = _pipe(tiny_sdxl_pipeline_dir, out, KOHYA)
    b = _lora_weights(kohya_pipe.unet)
    assert a.keys() == b.keys() and len(a) == len(kohya) * 2 // 3
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert np.abs(unet_output(kohya_pipe.unet) - ref).max() < 1e-5  # alpha / rank honoured


def test_sgm_names_match_the_original_unet_layout(tiny_sdxl_pipeline_dir: Path) -> None:
    """Every Linear/Conv layer's sgm name agrees with the LDM layout diffusers' single-file loader reads."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_pipeline_dir / "unet")
    up_has_attn = {i: hasattr(block, "attentions") for i, block in enumerate(unet.up_blocks)}
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(names) > 50
    # SDXL's added-conditioning MLP is label_emb.0 in sgm (diffusers' _convert_unet_lora_key maps it back)
    assert sgm_module_name("add_embedding.linear_2", dict(unet.config)) == "label_emb.0.2"
    names = [n for n in names if not n.startswith("add_embedding.")]  # the SD helper's layout has no added embedding
    for name in names:
        expected = _unet_key(name + ".weight", unet.config.layers_per_block, up_has_attn).removesuffix(".weight")
        assert sgm_module_name(name, dict(unet.config)) == expected, name
