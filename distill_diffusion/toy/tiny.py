"""Random-initialised tiny Stable Diffusion components for the toy world, saved as a stock diffusers pipeline.

Layout mirrors SD 1.x at a fraction of the size (built in well under a second on a CPU):

- UNet2DConditionModel, 4-channel 8x8 latents for 32^2 images, ``block_out_channels`` (32, 48, 48),
  ``layers_per_block`` 2, down blocks CrossAttn/CrossAttn/Down, up blocks Up/CrossAttn/CrossAttn, a
  cross-attention mid block (SD 1.x has (320, 640, 1280, 1280) with one more CrossAttn level). About
  1.4M parameters. Two layers per block and three levels leave BK-SDM (arXiv:2305.15798) something to
  remove in each of its Base/Small/Tiny variants.
- AutoencoderKL with three levels, ``block_out_channels`` (32, 64, 64): it downsamples by **4**, not 8
  (diffusers derives ``vae_scale_factor = 2 ** (len(block_out_channels) - 1)``). Code must read the factor
  from the VAE/pipeline, never assume 8. About 0.95M parameters. ``scaling_factor`` is calibrated so the
  toy images' latents have unit standard deviation (SD's 0.18215 was chosen the same way). A random VAE
  decodes to noise: fit it with ``distill_diffusion.toy.vae.train_toy_vae`` before training a teacher.
- CLIPTextModel: hidden size 64, 2 layers, 4 heads, 77 positions, ``quick_gelu`` like OpenAI CLIP
  (so family detection calls it SD 1.x); ``cross_attention_dim`` = 64.
- Tokenizer: :func:`distill_diffusion.toy.tokenizer.build_tokenizer` (generated in code, 77 tokens).
- A DINOv2-architecture ViT (``transformers.Dinov2Model``: patch 4, hidden size 64, 4 blocks, random weights) for
  ADD's discriminator (:func:`save_toy_dinov2`): the toy world has no self-supervised ViT, and its trained CLIP is
  the evaluators' feature network, which a discriminator must not be trained on.
- Scheduler: ``DDIMScheduler`` with SD 1.5's training schedule (1000 steps, ``scaled_linear``
  0.00085 -> 0.012, ``steps_offset`` 1, ``clip_sample`` False, ``set_alpha_to_one`` False).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from distill_diffusion.core.parameterization import PREDICTION_TYPES
from distill_diffusion.errors import require
from distill_diffusion.toy.tokenizer import build_tokenizer, write_tokenizer_files
from distill_diffusion.toy.vae import calibrate_scaling_factor, train_toy_vae
from distill_diffusion.toy.world import make_toy_dataset

VAE_DOWNSAMPLE = 4
TEXT_HIDDEN = 64

#: SD 1.5's scheduler config (the schedule the toy teacher is trained with).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def tiny_unet_config(resolution: int = 32) -> dict[str, Any]:
    """The toy UNet's config (a plain dict, so BK-SDM students can derive theirs from it)."""
    return {
        "sample_size": resolution // VAE_DOWNSAMPLE,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 48, 48),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": 4,  # diffusers' legacy name: the number of heads, as SD 1.x's 8
        "norm_num_groups": 8,
    }


def _tiny_vae(resolution: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )


def _tiny_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(config)


def build_tiny_components(resolution: int = 32, seed: int = 0, prediction_type: str = "epsilon", family: str = "sd1") -> dict[str, Any]:
    """Random-initialised tiny SD components: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``
    (``family="sdxl"``: :func:`distill_diffusion.toy.tiny_sdxl.build_tiny_sdxl_components`, with the second encoder).

    Deterministic for a seed; the caller's global torch RNG state is left untouched.
    """
    require(family in ("sd1", "sdxl"), f"family={family!r}; the toy has sd1 and sdxl")
    if family == "sdxl":
        from distill_diffusion.toy.tiny_sdxl import build_tiny_sdxl_components

        return build_tiny_sdxl_components(resolution, seed, prediction_type)
    require(resolution % 16 == 0 and resolution >= 16, f"resolution={resolution} must be a multiple of 16 (VAE x4, UNet x4)")
    require(prediction_type in PREDICTION_TYPES, f"prediction_type={prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(resolution))
        vae = _tiny_vae(resolution)
        text_encoder = _tiny_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    vae.register_to_config(scaling_factor=calibrate_scaling_factor(vae, resolution, seed=seed))
    scheduler = DDIMScheduler(**SD15_SCHEDULER_CONFIG, prediction_type=prediction_type)
    for module in (unet, vae, text_encoder):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_tiny_pipeline(out_dir: str | Path, components: dict[str, Any] | None = None, **kw: Any) -> Path:
    """Save a ``StableDiffusionPipeline`` folder (safetensors, no safety checker) and return its path (SDXL components:
    a ``StableDiffusionXLPipeline`` folder).

    ``components`` defaults to :func:`build_tiny_components` ``(**kw)``. The folder loads with stock
    ``StableDiffusionPipeline.from_pretrained(out_dir)``.
    """
    parts = components if components is not None else build_tiny_components(**kw)
    if "text_encoder_2" in parts:
        from distill_diffusion.toy.tiny_sdxl import save_tiny_sdxl_pipeline

        return save_tiny_sdxl_pipeline(out_dir, parts)
    pipe = StableDiffusionPipeline(
        **{k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    write_tokenizer_files(out / "tokenizer")  # vocab.json/merges.txt for transformers 4.x too
    return out


def init_toy(
    directory: str | Path,
    num_images: int = 2048,
    resolution: int = 32,
    seed: int = 0,
    prediction_type: str = "epsilon",
    vae_steps: int = 0,
    sdxl: bool = False,
) -> dict[str, Path]:
    """Write the toy dataset to ``directory/data``, a tiny teacher to ``directory/teacher`` and ADD's toy feature network
    to ``directory/dinov2`` (``sdxl``: also a tiny SDXL teacher to ``directory/teacher_xl``, with the same VAE).

    The teacher is random-initialised (seconds). ``vae_steps > 0`` first fits its VAE on toy images
    (:func:`distill_diffusion.toy.vae.train_toy_vae`, minutes on a CPU), which a teacher that is then
    trained for quality benchmarks needs; the UNet stays random either way.
    """
    root = Path(directory)
    data = make_toy_dataset(root / "data", num_images=num_images, resolution=resolution, seed=seed)
    parts = build_tiny_components(resolution=resolution, seed=seed, prediction_type=prediction_type)
    if vae_steps > 0:
        train_toy_vae(parts["vae"], steps=vae_steps, resolution=resolution, seed=seed)
    paths = {"data": data, "teacher": save_tiny_pipeline(root / "teacher", components=parts),
             "dinov2": save_toy_dinov2(root / "dinov2", resolution=resolution, seed=seed)}
    if sdxl:
        paths["teacher_xl"] = _save_xl_teacher(root / "teacher_xl", parts["vae"], resolution, seed, prediction_type)
    return paths


def _save_xl_teacher(out_dir: Path, vae: AutoencoderKL, resolution: int, seed: int, prediction_type: str) -> Path:
    """A random tiny SDXL pipeline sharing the SD teacher's VAE (a copy: SDXL's config adds ``force_upcast``)."""
    import copy

    from distill_diffusion.toy.tiny_sdxl import build_tiny_sdxl_components, save_tiny_sdxl_pipeline

    parts = build_tiny_sdxl_components(resolution, seed, prediction_type)
    parts["vae"] = copy.deepcopy(vae)
    parts["vae"].register_to_config(force_upcast=True)
    # the empty prompt's encoding as CFG's unconditional input, as the trained toy XL teacher (toy.build_xl)
    return save_tiny_sdxl_pipeline(out_dir, parts, force_zeros_for_empty_prompt=False)


def save_toy_dinov2(out_dir: str | Path, resolution: int = 32, seed: int = 0, hidden_size: int = 64, layers: int = 4) -> Path:
    """A random-initialised ``Dinov2Model`` (patch 4) saved as a transformers folder: ADD's feature network on the toy
    world (seconds). Random frozen features are a weaker discriminator space than a trained DINOv2 (ADD, Table 1a)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(image_size=resolution, patch_size=4, hidden_size=hidden_size, num_hidden_layers=layers,
                          num_attention_heads=4, mlp_ratio=2)
    out = Path(out_dir)
    Dinov2Model(config).eval().save_pretrained(out, safe_serialization=True)
    return out
